//! The on-disk batch frame: the unit the log writes, checksums, indexes and reads.
//!
//! A segment file is a dense sequence of frames. Every frame starts on a 16-byte boundary (rkyv's
//! alignment for the archived batch that follows the header) and is followed directly by the next
//! frame. Bytes after the last frame are zero: the writer pads its last partial block with zeros,
//! so "all zero from here" is how a scan tells a clean end from a torn tail.
//!
//! ```text
//!  byte  0        4      6      8           12          16
//!       +--------+------+------+-----------+-----------+
//!       | magic  | ver  | flags| frame_len | payload_  |   magic = "KAPB" (0x4250_414b LE)
//!       | u32    | u16  | u16  | u32       | len u32   |   ver   = FORMAT_VERSION
//!       +--------+------+------+-----------+-----------+   flags = 0 (reserved)
//!   16  | base_offset u64        | record_count u32 | synced_before u32|
//!   32  | first_timestamp i64    | max_timestamp i64                   |
//!   48  | append_time i64        | checksum u64                        |
//!   64  +------------------------------------------------------------ +
//!       | payload: rkyv archive of `BatchArchive` (payload_len bytes;  |
//!       | rkyv's root object sits at its very end)                     |
//!       +--------------------------------------------------------------+
//!       | zero padding up to frame_len (a multiple of 16)              |
//!       +--------------------------------------------------------------+
//! ```
//!
//! All integers are little-endian. `checksum = xxh3_64_with_seed(payload, xxh3_64(header[0..56]))`,
//! so one 64-bit value covers every header field and the payload. It is verified once per frame when
//! bytes come from disk; after that the archive is accessed without further validation.
//!
//! `synced_before` (version 2; a reserved zero in version 1): when the frame was appended, every
//! byte of its segment before this position was covered by a completed fdatasync. Recovery uses
//! it to tell corruption from a torn write exactly: damage below a valid frame's `synced_before`
//! lies in bytes that were synced before that frame existed, which no power cut can tear.
//!
//! `append_time` (version 3; a reserved zero in versions 1 and 2): the appender's wall clock in ms
//! when the frame was appended (`i64::MIN`, unknown, from a caller without a clock, see
//! `PartitionLog::append`). Age retention measures it, so a segment's index rebuilt by a scan
//! knows its append time from the frames themselves, exactly, and never falls back to producers'
//! event times. Version 1 and 2 frames read as `i64::MIN` (unknown).
//!
//! Why a header outside the archive: a scan must find frame boundaries, offsets and timestamps (for
//! recovery, indexes and seeking) without touching the payload, and the checksum must be checked
//! before any byte of the archive is trusted.

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// "KAPB" read as a little-endian u32.
pub const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"KAPB");
/// Bumped on any incompatible change of the header or the archive layout. Version 2 added
/// `synced_before`, version 3 `append_time`; version 1 and 2 frames (where they are reserved
/// zeros) are still read.
pub const FORMAT_VERSION: u16 = 3;
/// The first version, still read.
pub const FORMAT_VERSION_1: u16 = 1;
/// The version before `append_time`, still read.
pub const FORMAT_VERSION_2: u16 = 2;
/// The fixed header in front of every archive.
pub const FRAME_HEADER_SIZE: usize = 64;
/// Every frame starts and ends on this boundary, which is the alignment rkyv needs.
pub const FRAME_ALIGN: usize = 16;
const _: () = assert!(FRAME_HEADER_SIZE.is_multiple_of(FRAME_ALIGN));

/// The decoded fixed header of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub version: u16,
    pub frame_len: u32,
    pub payload_len: u32,
    pub base_offset: u64,
    pub record_count: u32,
    pub first_timestamp: i64,
    pub max_timestamp: i64,
    /// Every byte of the segment before this position was synced when the frame was appended
    /// (0 in version 1 frames, and whenever nothing of the segment was synced yet).
    pub synced_before: u32,
    /// The appender's wall clock (ms) at the append: what age retention measures. `i64::MIN`
    /// (unknown) in version 1 and 2 frames, which keep a reserved zero in its place.
    pub append_time: i64,
    pub checksum: u64,
}

impl FrameHeader {
    /// The offset after the last record of this frame.
    pub fn next_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count)
    }

    /// Writes the header, with the checksum computed over it and `payload`.
    pub fn write(&mut self, target: &mut [u8; FRAME_HEADER_SIZE], payload: &[u8]) {
        self.write_fields(target);
        self.checksum = frame_checksum(&target[0..56], payload);
        target[56..64].copy_from_slice(&self.checksum.to_le_bytes());
    }

    /// Writes every field but the checksum (bytes 56..64 are left as they are): for an encoder
    /// that hashes the payload after writing it (`checksum_seed`, then `xxh3` with that seed).
    pub(crate) fn write_fields(&self, target: &mut [u8; FRAME_HEADER_SIZE]) {
        target[0..4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
        target[4..6].copy_from_slice(&self.version.to_le_bytes());
        target[6..8].copy_from_slice(&0u16.to_le_bytes());
        target[8..12].copy_from_slice(&self.frame_len.to_le_bytes());
        target[12..16].copy_from_slice(&self.payload_len.to_le_bytes());
        target[16..24].copy_from_slice(&self.base_offset.to_le_bytes());
        target[24..28].copy_from_slice(&self.record_count.to_le_bytes());
        target[28..32].copy_from_slice(&self.synced_before.to_le_bytes());
        target[32..40].copy_from_slice(&self.first_timestamp.to_le_bytes());
        target[40..48].copy_from_slice(&self.max_timestamp.to_le_bytes());
        let append_time = if self.version >= FORMAT_VERSION { self.append_time as u64 } else { 0 };
        target[48..56].copy_from_slice(&append_time.to_le_bytes());
    }
}

fn frame_checksum(header_56: &[u8], payload: &[u8]) -> u64 {
    xxh3_64_with_seed(payload, checksum_seed(header_56))
}

/// The seed the payload is hashed with: the hash of the header's first 56 bytes, so the frame's
/// checksum is `xxh3_64_with_seed(payload, checksum_seed(header[0..56]))`.
pub(crate) fn checksum_seed(header_56: &[u8]) -> u64 {
    xxh3_64(header_56)
}

/// What is wrong with the bytes at a frame position. The caller adds the file and position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameDefect {
    /// Fewer bytes than a header, or than the header's frame length, remain.
    Truncated { available: usize, needed: usize },
    /// The magic does not match; `all_zero` tells a clean end of data from garbage.
    BadMagic { found: u32, all_zero: bool },
    /// A frame written by a newer (or unknown) format.
    UnknownVersion { found: u16 },
    /// Header fields that contradict each other.
    BadHeader { reason: &'static str },
    /// The stored checksum does not match the bytes.
    ChecksumMismatch { expected: u64, actual: u64 },
}

impl std::fmt::Display for FrameDefect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameDefect::Truncated { available, needed } => {
                write!(f, "truncated frame: {available} bytes available, {needed} needed")
            }
            FrameDefect::BadMagic { found, all_zero: _ } => write!(f, "bad magic {found:#010x}"),
            FrameDefect::UnknownVersion { found } => {
                write!(f, "unknown format version {found} (this build reads {FORMAT_VERSION})")
            }
            FrameDefect::BadHeader { reason } => write!(f, "inconsistent header: {reason}"),
            FrameDefect::ChecksumMismatch { expected, actual } => {
                write!(f, "checksum mismatch: stored {expected:#018x}, computed {actual:#018x}")
            }
        }
    }
}

fn read_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn read_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn read_u64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// Decodes and sanity-checks the header at the start of `bytes` without touching the payload.
/// Cheap: used to walk frame boundaries before the checksums are verified.
pub fn parse_header(bytes: &[u8]) -> Result<FrameHeader, FrameDefect> {
    if bytes.len() < FRAME_HEADER_SIZE {
        let all_zero = bytes.iter().all(|b| *b == 0);
        if all_zero {
            return Err(FrameDefect::BadMagic { found: 0, all_zero: true });
        }
        return Err(FrameDefect::Truncated { available: bytes.len(), needed: FRAME_HEADER_SIZE });
    }
    let magic = read_u32(bytes, 0);
    if magic != FRAME_MAGIC {
        let all_zero = bytes[..FRAME_HEADER_SIZE].iter().all(|b| *b == 0);
        return Err(FrameDefect::BadMagic { found: magic, all_zero });
    }
    let version = read_u16(bytes, 4);
    if !(FORMAT_VERSION_1..=FORMAT_VERSION).contains(&version) {
        return Err(FrameDefect::UnknownVersion { found: version });
    }
    let header = FrameHeader {
        version,
        frame_len: read_u32(bytes, 8),
        payload_len: read_u32(bytes, 12),
        base_offset: read_u64(bytes, 16),
        record_count: read_u32(bytes, 24),
        first_timestamp: read_u64(bytes, 32) as i64,
        max_timestamp: read_u64(bytes, 40) as i64,
        synced_before: read_u32(bytes, 28),
        append_time: if version >= FORMAT_VERSION { read_u64(bytes, 48) as i64 } else { i64::MIN },
        checksum: read_u64(bytes, 56),
    };
    let reserved_v1 = version == FORMAT_VERSION_1 && header.synced_before != 0;
    let reserved_v2 = version < FORMAT_VERSION && read_u64(bytes, 48) != 0;
    if read_u16(bytes, 6) != 0 || reserved_v1 || reserved_v2 {
        return Err(FrameDefect::BadHeader { reason: "reserved field is not zero" });
    }
    if !(header.frame_len as usize).is_multiple_of(FRAME_ALIGN) {
        return Err(FrameDefect::BadHeader { reason: "frame length is not 16-byte aligned" });
    }
    if frame_len_for(header.payload_len as usize) != header.frame_len as usize {
        return Err(FrameDefect::BadHeader {
            reason: "frame length does not match payload length",
        });
    }
    if header.record_count == 0 {
        return Err(FrameDefect::BadHeader { reason: "record count is zero" });
    }
    Ok(header)
}

/// Parses the header, then verifies the checksum over the whole frame.
/// Returns the header and the exact payload slice (rkyv needs the exact slice).
pub fn parse_frame(bytes: &[u8]) -> Result<(FrameHeader, &[u8]), FrameDefect> {
    let header = parse_header(bytes)?;
    let frame_len = header.frame_len as usize;
    if bytes.len() < frame_len {
        return Err(FrameDefect::Truncated { available: bytes.len(), needed: frame_len });
    }
    let payload = &bytes[FRAME_HEADER_SIZE..FRAME_HEADER_SIZE + header.payload_len as usize];
    let actual = frame_checksum(&bytes[0..56], payload);
    if actual != header.checksum {
        return Err(FrameDefect::ChecksumMismatch { expected: header.checksum, actual });
    }
    Ok((header, payload))
}

/// The total frame length for a payload of `payload_len` bytes.
pub fn frame_len_for(payload_len: usize) -> usize {
    (FRAME_HEADER_SIZE + payload_len).next_multiple_of(FRAME_ALIGN)
}

#[cfg(test)]
mod tests;
