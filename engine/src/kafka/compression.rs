//! Decompression of compressed Kafka batches (gzip, snappy, lz4, zstd), always bounded.
//!
//! Produced batches are stored decompressed (see the module doc of `kafka`), so every codec a
//! client may use is decoded here. Each decoder writes through a limit: a small batch claiming to
//! expand to gigabytes (a decompression bomb) is refused once it passes the limit, before the
//! memory is spent. Pure-Rust decoders (flate2 with miniz_oxide, snap, lz4_flex, ruzstd) keep the
//! build free of C libraries.

use std::io::{Read, Write};

/// The codec in bits 0-2 of a batch's attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Codec {
    None = 0,
    Gzip = 1,
    Snappy = 2,
    Lz4 = 3,
    Zstd = 4,
}

impl Codec {
    pub(crate) fn from_attributes(attributes: i16) -> Result<Codec, DecompressError> {
        Ok(match attributes & 0x7 {
            0 => Codec::None,
            1 => Codec::Gzip,
            2 => Codec::Snappy,
            3 => Codec::Lz4,
            4 => Codec::Zstd,
            other => return Err(DecompressError::UnknownCodec(other)),
        })
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub(crate) enum DecompressError {
    #[error("unknown compression codec {0} in the batch attributes")]
    UnknownCodec(i16),
    #[error("{codec:?} records decompress to more than {limit} bytes")]
    TooLarge { codec: Codec, limit: usize },
    #[error("damaged {codec:?} data: {reason}")]
    Damaged { codec: Codec, reason: String },
}

/// The largest zstd window accepted (the decoder allocates it): zstd levels up to 19 use at most
/// 8 MiB; 32 MiB leaves room without letting a frame header claim gigabytes.
const ZSTD_WINDOW_MAX: u64 = 32 << 20;

/// The xerial snappy framing some clients (the Java client, kafka-python) wrap blocks in.
const XERIAL_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";

/// Decompresses `input` into `out` (cleared first), refusing output past `limit` bytes.
pub(crate) fn decompress(
    codec: Codec,
    input: &[u8],
    limit: usize,
    out: &mut Vec<u8>,
) -> Result<(), DecompressError> {
    out.clear();
    let damaged = |reason: String| DecompressError::Damaged { codec, reason };
    match codec {
        Codec::None => {
            if input.len() > limit {
                return Err(DecompressError::TooLarge { codec, limit });
            }
            out.extend_from_slice(input);
        }
        Codec::Gzip => {
            read_bounded(flate2::read::MultiGzDecoder::new(input), codec, limit, out)?;
        }
        Codec::Lz4 => {
            read_bounded(lz4_flex::frame::FrameDecoder::new(input), codec, limit, out)?;
        }
        Codec::Zstd => {
            // One or more concatenated frames.
            let mut rest = input;
            while !rest.is_empty() {
                let before = rest.len();
                let decoder = ruzstd::decoding::StreamingDecoder::new_with_max_window_size(
                    &mut rest,
                    ZSTD_WINDOW_MAX,
                )
                .map_err(|e| damaged(e.to_string()))?;
                let left = limit - out.len();
                let mut frame = Vec::new();
                read_bounded(decoder, codec, left, &mut frame)?;
                out.extend_from_slice(&frame);
                if rest.len() == before {
                    return Err(damaged("a frame consumed no input".into()));
                }
            }
        }
        Codec::Snappy => {
            if input.starts_with(XERIAL_MAGIC) {
                // magic, version i32, compatible version i32, then (length i32, raw block)*.
                let mut pos = 16;
                if input.len() < pos {
                    return Err(damaged("truncated xerial header".into()));
                }
                while pos < input.len() {
                    let len_bytes: [u8; 4] = input
                        .get(pos..pos + 4)
                        .and_then(|b| b.try_into().ok())
                        .ok_or_else(|| damaged("truncated xerial block length".into()))?;
                    let len = u32::from_be_bytes(len_bytes) as usize;
                    pos += 4;
                    let block = input
                        .get(pos..pos + len)
                        .ok_or_else(|| damaged("truncated xerial block".into()))?;
                    pos += len;
                    snappy_block(block, limit, out)?;
                }
            } else {
                snappy_block(input, limit, out)?;
            }
        }
    }
    Ok(())
}

/// Appends one raw snappy block to `out`; its length is in its preamble, checked first.
fn snappy_block(block: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<(), DecompressError> {
    let codec = Codec::Snappy;
    let len = snap::raw::decompress_len(block)
        .map_err(|e| DecompressError::Damaged { codec, reason: e.to_string() })?;
    if out.len() + len > limit {
        return Err(DecompressError::TooLarge { codec, limit });
    }
    let start = out.len();
    out.resize(start + len, 0);
    let written = snap::raw::Decoder::new()
        .decompress(block, &mut out[start..])
        .map_err(|e| DecompressError::Damaged { codec, reason: e.to_string() })?;
    out.truncate(start + written);
    Ok(())
}

/// Compresses as producers do (the test client and the benchmark send compressed batches).
pub(crate) fn compress(codec: Codec, input: &[u8]) -> Vec<u8> {
    match codec {
        Codec::None => input.to_vec(),
        Codec::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(input).expect("gzip");
            e.finish().expect("gzip")
        }
        Codec::Snappy => snap::raw::Encoder::new().compress_vec(input).expect("snappy"),
        Codec::Lz4 => {
            let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
            e.write_all(input).expect("lz4");
            e.finish().expect("lz4")
        }
        Codec::Zstd => {
            ruzstd::encoding::compress_to_vec(input, ruzstd::encoding::CompressionLevel::Fastest)
        }
    }
}

fn read_bounded(
    reader: impl Read,
    codec: Codec,
    limit: usize,
    out: &mut Vec<u8>,
) -> Result<(), DecompressError> {
    let start = out.len();
    reader
        .take(limit as u64 + 1)
        .read_to_end(out)
        .map_err(|e| DecompressError::Damaged { codec, reason: e.to_string() })?;
    if out.len() - start > limit {
        return Err(DecompressError::TooLarge { codec, limit });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xerial(input: &[u8]) -> Vec<u8> {
        let mut out = XERIAL_MAGIC.to_vec();
        out.extend_from_slice(&1i32.to_be_bytes());
        out.extend_from_slice(&1i32.to_be_bytes());
        for chunk in input.chunks(1000) {
            let block = snap::raw::Encoder::new().compress_vec(chunk).expect("snappy");
            out.extend_from_slice(&(block.len() as u32).to_be_bytes());
            out.extend_from_slice(&block);
        }
        out
    }

    #[test]
    fn every_codec_round_trips_and_stops_at_the_limit() {
        let input: Vec<u8> = (0..50_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        let mut out = Vec::new();
        for codec in [Codec::None, Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd] {
            let packed = compress(codec, &input);
            decompress(codec, &packed, input.len(), &mut out).expect("decompresses");
            assert_eq!(out, input, "{codec:?}");
            let err = decompress(codec, &packed, input.len() - 1, &mut out).expect_err("limit");
            assert_eq!(err, DecompressError::TooLarge { codec, limit: input.len() - 1 });
        }
        decompress(Codec::Snappy, &xerial(&input), input.len(), &mut out).expect("xerial");
        assert_eq!(out, input);
        // Two zstd frames back to back.
        let mut two = compress(Codec::Zstd, &input[..1000]);
        two.extend(compress(Codec::Zstd, &input[1000..]));
        decompress(Codec::Zstd, &two, input.len(), &mut out).expect("two frames");
        assert_eq!(out, input);
    }

    #[test]
    fn a_bomb_is_refused_without_expanding_it() {
        let zeros = vec![0u8; 64 << 20];
        for codec in [Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd] {
            let packed = compress(codec, &zeros);
            let mut out = Vec::new();
            let err = decompress(codec, &packed, 1 << 20, &mut out).expect_err("bomb");
            assert!(matches!(err, DecompressError::TooLarge { .. }), "{codec:?}: {err}");
            assert!(out.capacity() <= 4 << 20, "{codec:?} grew to {}", out.capacity());
        }
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut out = Vec::new();
        for round in 0..2000 {
            let len = round % 300;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            for codec in [Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd] {
                let _ = decompress(codec, &bytes, 1 << 16, &mut out);
                let mut framed = XERIAL_MAGIC.to_vec();
                framed.extend_from_slice(&bytes);
                let _ = decompress(Codec::Snappy, &framed, 1 << 16, &mut out);
            }
        }
    }
}
