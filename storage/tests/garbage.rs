//! Decoders against garbage: random bytes and randomly damaged real frames, segments and index files
//! go through every decoder that reads disk data (frame header, checksum, archive check, segment
//! scan, index file). Each must return an error or a valid result, never panic or read out of
//! bounds. A deterministic stand-in for the cargo-fuzz targets (which need a nightly toolchain);
//! `KAPPA_GARBAGE_ROUNDS` asks for more rounds.

use std::path::Path;

use kappa_storage::batch::BatchRef;
use kappa_storage::format;
use kappa_storage::index::SegmentIndex;
use kappa_storage::scan::{scan_segment_std, Depth};
use kappa_storage::{BatchEncoder, Limits, ProducerInfo, Record};
use rkyv::util::AlignedVec;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// A few real frames back to back, as a segment holds them.
fn segment_bytes(rng: &mut Rng) -> Vec<u8> {
    let mut encoder = BatchEncoder::new(Limits::default());
    let mut bytes = Vec::new();
    let mut offset = 0;
    for _ in 0..4 {
        let values: Vec<Vec<u8>> =
            (0..1 + rng.below(20)).map(|i| vec![i as u8; rng.below(300)]).collect();
        let records: Vec<Record<'_>> =
            values.iter().enumerate().map(|(i, v)| Record::new(i as i64, Some(b"k"), v)).collect();
        let header = *encoder.encode(offset, &records, ProducerInfo::default()).expect("encodes");
        offset = header.next_offset();
        bytes.extend_from_slice(encoder.frame());
    }
    bytes
}

fn damage(bytes: &mut [u8], rng: &mut Rng) {
    for _ in 0..1 + rng.below(8) {
        if bytes.is_empty() {
            return;
        }
        let at = rng.below(bytes.len());
        match rng.below(3) {
            0 => bytes[at] ^= 1 << rng.below(8),
            1 => bytes[at] = rng.next() as u8,
            _ => bytes[at] = 0xFF,
        }
    }
}

fn decode_everything(bytes: &[u8], dir: &Path) {
    let mut aligned = AlignedVec::<16>::new();
    aligned.extend_from_slice(bytes);
    let _ = format::parse_header(&aligned);
    if let Ok((header, payload)) = format::parse_frame(&aligned) {
        let _ = BatchRef::check_archive(payload);
        // Only archives that pass the full check are viewed without validation.
        if BatchRef::check_archive(payload).is_ok() {
            if let Ok(batch) = BatchRef::from_verified(header, payload) {
                for record in batch.records() {
                    let _ = (record.key(), record.value().len(), record.headers().count());
                }
            }
        }
    }
    let _ = SegmentIndex::decode(Path::new("garbage.index"), bytes);
    let path = dir.join("00000000000000000000.log");
    std::fs::write(&path, bytes).expect("write");
    let _ = scan_segment_std(&path, 0, Depth::Deep);
}

#[test]
fn decoders_survive_garbage_and_damage() {
    let rounds: usize =
        std::env::var("KAPPA_GARBAGE_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(400);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    let index = {
        let mut index = SegmentIndex::new(0, 64);
        for i in 0..50 {
            index.push_frame(i * 3, 3, i as i64, 112);
        }
        index.encode()
    };
    for _ in 0..rounds {
        // Random bytes, sometimes with a valid magic in front to get past the first check.
        let mut noise: Vec<u8> = (0..rng.below(600)).map(|_| rng.next() as u8).collect();
        if noise.len() >= 4 && rng.below(2) == 0 {
            noise[..4].copy_from_slice(&format::FRAME_MAGIC.to_le_bytes());
        }
        decode_everything(&noise, dir.path());
        // Damaged real segments and index files.
        let mut segment = segment_bytes(&mut rng);
        damage(&mut segment, &mut rng);
        decode_everything(&segment, dir.path());
        let mut damaged_index = index.clone();
        damage(&mut damaged_index, &mut rng);
        let _ = SegmentIndex::decode(Path::new("x.index"), &damaged_index);
        // Truncated at a random point.
        let segment = segment_bytes(&mut rng);
        let cut = rng.below(segment.len());
        decode_everything(&segment[..cut], dir.path());
    }
}
