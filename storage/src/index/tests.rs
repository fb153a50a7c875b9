//! Sparse index lookups by offset and time, and the index file round trip.

use super::*;

/// Frames of 3 records, 100 bytes each, timestamps rising by 10 per frame with one late frame.
fn sample() -> SegmentIndex {
    let mut index = SegmentIndex::new(1000, 250);
    let timestamps = [10, 20, 30, 25, 50, 60, 70, 80, 90, 100];
    for (i, ts) in timestamps.iter().enumerate() {
        index.push_frame(1000 + 3 * i as u64, 3, *ts, 100);
    }
    index
}

#[test]
fn entries_are_sparse() {
    let index = sample();
    let positions: Vec<u32> = index.entries.iter().map(|e| e.position).collect();
    assert_eq!(positions, vec![0, 300, 600, 900]);
    assert_eq!(index.next_offset, 1030);
    assert_eq!(index.size_bytes, 1000);
    assert_eq!(index.max_timestamp, 100);
}

#[test]
fn offset_lookup_finds_the_frame_at_or_before() {
    let index = sample();
    assert_eq!(index.position_for_offset(1000), 0);
    assert_eq!(index.position_for_offset(1008), 0);
    assert_eq!(index.position_for_offset(1009), 300);
    assert_eq!(index.position_for_offset(1029), 900);
    assert_eq!(index.position_for_offset(5), 0);
}

#[test]
fn time_lookup_never_skips_an_older_record() {
    let index = sample();
    // Everything before the returned position is strictly older than the target.
    assert_eq!(index.position_for_timestamp(0), 0);
    assert_eq!(index.position_for_timestamp(30), 0);
    assert_eq!(index.position_for_timestamp(31), 300);
    assert_eq!(index.position_for_timestamp(61), 600);
    assert_eq!(index.position_for_timestamp(1_000), 900);
}

#[test]
fn file_round_trip_and_damage() {
    let index = sample();
    let bytes = index.encode();
    let path = Path::new("x.index");
    assert_eq!(SegmentIndex::decode(path, &bytes).expect("decodes"), index);
    for at in [0, 9, 20, 64, bytes.len() - 1] {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x10;
        assert!(SegmentIndex::decode(path, &damaged).is_err(), "damage at {at} went unnoticed");
    }
    assert!(SegmentIndex::decode(path, &bytes[..bytes.len() - 16]).is_err());
}

#[test]
fn version_2_keeps_the_append_time_and_version_1_still_reads() {
    let mut index = sample();
    index.append_time_ms = 1_700_000_000_123;
    let bytes = index.encode();
    assert_eq!(u16::from_le_bytes([bytes[4], bytes[5]]), 2);
    let decoded = SegmentIndex::decode(Path::new("x.index"), &bytes).expect("decodes");
    assert_eq!(decoded.append_time_ms, 1_700_000_000_123);
    assert_eq!(decoded.retention_time_ms(), Some(1_700_000_000_123));

    // A version 1 file: version 1, a zero where the append time now sits, its own checksum.
    let mut v1 = sample().encode();
    v1[4..6].copy_from_slice(&1u16.to_le_bytes());
    v1[48..56].copy_from_slice(&0u64.to_le_bytes());
    let checksum = xxh3_64_with_seed(&v1[64..], xxh3_64(&v1[..56]));
    v1[56..64].copy_from_slice(&checksum.to_le_bytes());
    let old = SegmentIndex::decode(Path::new("old.index"), &v1).expect("version 1 decodes");
    assert_eq!(old.append_time_ms, i64::MIN, "unknown");
    assert_eq!(old.retention_time_ms(), None, "unknown: never the records' event time");
    assert_eq!(old.entries, sample().entries);
}
