//! Frame header encoding and the defects a parse reports.

use super::*;

fn frame_with_payload(payload: &[u8]) -> Vec<u8> {
    let mut header = FrameHeader {
        version: FORMAT_VERSION,
        frame_len: frame_len_for(payload.len()) as u32,
        payload_len: payload.len() as u32,
        base_offset: 42,
        record_count: 3,
        first_timestamp: 1_000,
        max_timestamp: 2_000,
        synced_before: 0,
        append_time: 1_700_000_000_000,
        checksum: 0,
    };
    let mut bytes = vec![0u8; header.frame_len as usize];
    let mut head = [0u8; FRAME_HEADER_SIZE];
    header.write(&mut head, payload);
    bytes[..FRAME_HEADER_SIZE].copy_from_slice(&head);
    bytes[FRAME_HEADER_SIZE..FRAME_HEADER_SIZE + payload.len()].copy_from_slice(payload);
    bytes
}

#[test]
fn header_round_trips() {
    let bytes = frame_with_payload(b"hello, frame");
    let (header, payload) = parse_frame(&bytes).expect("valid frame");
    assert_eq!(header.base_offset, 42);
    assert_eq!(header.record_count, 3);
    assert_eq!(header.next_offset(), 45);
    assert_eq!(header.first_timestamp, 1_000);
    assert_eq!(header.max_timestamp, 2_000);
    assert_eq!(header.append_time, 1_700_000_000_000);
    assert_eq!(payload, b"hello, frame");
    assert_eq!(bytes.len() % FRAME_ALIGN, 0);
}

#[test]
fn every_flipped_bit_is_detected() {
    let bytes = frame_with_payload(b"some payload bytes that matter");
    let covered = FRAME_HEADER_SIZE + 30;
    for byte in 0..covered {
        for bit in 0..8 {
            let mut damaged = bytes.clone();
            damaged[byte] ^= 1 << bit;
            assert!(
                parse_frame(&damaged).is_err(),
                "flip of bit {bit} in byte {byte} went unnoticed"
            );
        }
    }
}

#[test]
fn zeros_are_a_clean_end_and_garbage_is_not() {
    assert_eq!(parse_header(&[0u8; 100]), Err(FrameDefect::BadMagic { found: 0, all_zero: true }));
    assert_eq!(parse_header(&[0u8; 10]), Err(FrameDefect::BadMagic { found: 0, all_zero: true }));
    let mut garbage = [0u8; 100];
    garbage[70] = 1;
    garbage[0] = 7;
    assert!(matches!(parse_header(&garbage), Err(FrameDefect::BadMagic { all_zero: false, .. })));
}

#[test]
fn truncation_and_unknown_version_are_typed() {
    let bytes = frame_with_payload(b"0123456789");
    assert!(matches!(parse_frame(&bytes[..bytes.len() - 16]), Err(FrameDefect::Truncated { .. })));
    assert!(matches!(parse_header(&bytes[..20]), Err(FrameDefect::Truncated { .. })));
    let mut newer = bytes.clone();
    newer[4] = 9;
    assert_eq!(parse_header(&newer), Err(FrameDefect::UnknownVersion { found: 9 }));
}

#[test]
fn older_frames_still_read_and_newer_ones_carry_their_fields() {
    let payload = b"a payload";
    let mut header = FrameHeader {
        version: FORMAT_VERSION_1,
        frame_len: frame_len_for(payload.len()) as u32,
        payload_len: payload.len() as u32,
        base_offset: 7,
        record_count: 1,
        first_timestamp: 1,
        max_timestamp: 1,
        synced_before: 0,
        append_time: 5_000,
        checksum: 0,
    };
    let frame = |header: &mut FrameHeader| {
        let mut bytes = vec![0u8; header.frame_len as usize];
        let mut head = [0u8; FRAME_HEADER_SIZE];
        header.write(&mut head, payload);
        bytes[..FRAME_HEADER_SIZE].copy_from_slice(&head);
        bytes[FRAME_HEADER_SIZE..FRAME_HEADER_SIZE + payload.len()].copy_from_slice(payload);
        bytes
    };
    let v1 = frame(&mut header);
    let parsed = parse_frame(&v1).expect("version 1 reads").0;
    assert_eq!(parsed.synced_before, 0);
    assert_eq!(parsed.append_time, i64::MIN, "not in version 1: unknown");
    // In version 1 the field was reserved: a non-zero value there is damage.
    header.synced_before = 4096;
    let bad_v1 = frame(&mut header);
    assert!(matches!(parse_header(&bad_v1), Err(FrameDefect::BadHeader { .. })));
    header.version = FORMAT_VERSION_2;
    let v2 = frame(&mut header);
    let parsed = parse_frame(&v2).expect("version 2 reads").0;
    assert_eq!(parsed.synced_before, 4096);
    assert_eq!(parsed.append_time, i64::MIN, "not in version 2: unknown");
    // In versions 1 and 2 the append time's bytes were reserved: non-zero there is damage.
    let mut bad_v2 = v2.clone();
    bad_v2[50] = 1;
    assert!(matches!(parse_header(&bad_v2), Err(FrameDefect::BadHeader { .. })));
    header.version = FORMAT_VERSION;
    let v3 = frame(&mut header);
    let parsed = parse_frame(&v3).expect("version 3 reads").0;
    assert_eq!((parsed.synced_before, parsed.append_time), (4096, 5_000));
}
