//! The durable sync watermark of a partition (`synced.wm` in its directory): the proof that a
//! completed fdatasync covered the active segment up to a position, for the frames no later frame
//! vouches for.
//!
//! Every frame carries `synced_before` (see `format`), so damage below a later valid frame's
//! `synced_before` is provably corruption. The frames of the last fdatasync have no later frame:
//! without another record of that sync, recovery could only call damage in them a torn tail and
//! cut `synced`-acknowledged records. The writer records it here once a sync completed and the log
//! went idle (and always in `close`), so under continuous load no extra fsync is spent: later
//! frames prove the earlier syncs.
//!
//! ```text
//!  file: two 4 KiB slots; a write replaces one slot (the older), so a torn write never loses the
//!        other slot's proof; the valid slot with the higher sequence wins.
//!  slot: byte 0   magic "KAWM"      u32
//!             4   version (1)       u16, then 2 reserved zero bytes
//!             8   sequence          u64  (one more per write; slot = sequence % 2)
//!            16   segment_base      u64  (the active segment the claim is about)
//!            24   synced            u64  (bytes of that segment an fdatasync covered)
//!            32   checksum          u64  xxh3_64(slot[0..32]); zeros to the end of the slot
//! ```
//!
//! A claim is only ever written after the fdatasync it records completed, so every valid slot
//! tells the truth (repair, which cuts synced data, replaces the whole file first). A claim about
//! an older segment than the active one says nothing (a sealed segment was synced whole); a file
//! with no valid slot says nothing either (recovery falls back to the frame rule, never refuses).

use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::xxh3_64;

use crate::io::{Disk, File, BLOCK_SIZE};
use crate::Error;

/// The watermark's file name in a partition dir (no segment, index or temp file looks like it).
pub const FILE_NAME: &str = "synced.wm";
/// Bytes of one slot (a DMA block); the file holds two.
pub const SLOT_SIZE: usize = BLOCK_SIZE;
const MAGIC: u32 = u32::from_le_bytes(*b"KAWM");
const VERSION: u16 = 1;
const BODY: usize = 32;

/// One claim: bytes `[0, synced)` of the segment with `segment_base` were covered by a completed
/// fdatasync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermark {
    pub sequence: u64,
    pub segment_base: u64,
    pub synced: u64,
}

/// `DIR/synced.wm`.
pub fn path(partition_dir: &Path) -> PathBuf {
    partition_dir.join(FILE_NAME)
}

impl Watermark {
    /// The slot this claim is written to: the one its predecessor did not use.
    pub fn slot(&self) -> u64 {
        self.sequence % 2
    }

    /// The slot's bytes (`SLOT_SIZE`, zero padded).
    pub fn encode_into(&self, slot: &mut [u8]) {
        slot.fill(0);
        slot[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        slot[4..6].copy_from_slice(&VERSION.to_le_bytes());
        slot[8..16].copy_from_slice(&self.sequence.to_le_bytes());
        slot[16..24].copy_from_slice(&self.segment_base.to_le_bytes());
        slot[24..32].copy_from_slice(&self.synced.to_le_bytes());
        let checksum = xxh3_64(&slot[..BODY]);
        slot[BODY..BODY + 8].copy_from_slice(&checksum.to_le_bytes());
    }

    fn decode_slot(slot: &[u8]) -> Option<Watermark> {
        if slot.len() < BODY + 8 {
            return None;
        }
        let u64_at = |at: usize| u64::from_le_bytes(slot[at..at + 8].try_into().expect("8 bytes"));
        let magic = u32::from_le_bytes(slot[0..4].try_into().expect("4 bytes"));
        let version = u16::from_le_bytes(slot[4..6].try_into().expect("2 bytes"));
        if magic != MAGIC || version != VERSION || u64_at(BODY) != xxh3_64(&slot[..BODY]) {
            return None;
        }
        Some(Watermark { sequence: u64_at(8), segment_base: u64_at(16), synced: u64_at(24) })
    }

    /// The newest valid claim of a watermark file's bytes (`None`: no valid slot, no proof).
    pub fn decode(bytes: &[u8]) -> Option<Watermark> {
        bytes
            .chunks(SLOT_SIZE)
            .take(2)
            .filter_map(Watermark::decode_slot)
            .max_by_key(|w| w.sequence)
    }

    /// How many bytes of the segment with `base` this claim says were synced: 0 when the claim is
    /// about an older segment (superseded: a sealed segment was synced whole before the next one
    /// was created).
    pub fn synced_in(claim: Option<&Watermark>, base: u64) -> u64 {
        match claim {
            Some(w) if w.segment_base == base => w.synced,
            _ => 0,
        }
    }
}

/// Writes `claim` into its slot of the open watermark file and fdatasyncs it (the writer task,
/// through the seam: O_DIRECT and io_uring in production).
pub(crate) async fn write(file: &File, claim: &Watermark) -> std::io::Result<()> {
    let mut buf = file.alloc_dma_buffer(SLOT_SIZE);
    claim.encode_into(&mut buf.as_bytes_mut()[..SLOT_SIZE]);
    let written = file.write_at(buf, claim.slot() * SLOT_SIZE as u64).await?;
    if written < SLOT_SIZE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::WriteZero,
            format!("short write: {written} of {SLOT_SIZE} bytes"),
        ));
    }
    file.fdatasync().await
}

/// Reads a partition's watermark (blocking; offline tools). A missing file is no claim.
pub fn read_blocking(partition_dir: &Path) -> Result<Option<Watermark>, Error> {
    match Disk::Dma.read_file_blocking(&path(partition_dir)) {
        Ok(bytes) => Ok(Watermark::decode(&bytes)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Replaces the whole watermark file with one claim (the other slot empty), atomically and
/// durably: `kappa repair` lowers the watermark to its cut this way, so no older slot can claim
/// more than the cut left. The sequence continues after the file's newest valid one.
pub fn rewrite_blocking(
    disk: &Disk,
    partition_dir: &Path,
    segment_base: u64,
    synced: u64,
) -> Result<Watermark, Error> {
    let file = path(partition_dir);
    let previous = match disk.read_file_blocking(&file) {
        Ok(bytes) => Watermark::decode(&bytes),
        Err(e) if e.is_not_found() => None,
        Err(e) => return Err(e),
    };
    let claim =
        Watermark { sequence: previous.map_or(1, |w| w.sequence + 1), segment_base, synced };
    let mut bytes = vec![0u8; 2 * SLOT_SIZE];
    let at = claim.slot() as usize * SLOT_SIZE;
    claim.encode_into(&mut bytes[at..at + SLOT_SIZE]);
    disk.write_file_atomic_blocking(&file, &bytes)?;
    Ok(claim)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(claims: &[Watermark]) -> Vec<u8> {
        let mut bytes = vec![0u8; 2 * SLOT_SIZE];
        for claim in claims {
            let at = claim.slot() as usize * SLOT_SIZE;
            claim.encode_into(&mut bytes[at..at + SLOT_SIZE]);
        }
        bytes
    }

    #[test]
    fn the_newer_valid_slot_wins_and_a_torn_one_leaves_the_other() {
        let old = Watermark { sequence: 6, segment_base: 100, synced: 4096 };
        let new = Watermark { sequence: 7, segment_base: 100, synced: 9000 };
        let mut bytes = file(&[old, new]);
        assert_eq!(Watermark::decode(&bytes), Some(new));
        // A torn write of the newer slot (any byte of its claim): the older proof stands.
        bytes[SLOT_SIZE + 30] ^= 1;
        assert_eq!(Watermark::decode(&bytes), Some(old));
        bytes[3] ^= 1;
        assert_eq!(Watermark::decode(&bytes), None, "both slots bad: no claim");
        assert_eq!(Watermark::decode(&[]), None, "an empty (just created) file: no claim");
        assert_eq!(Watermark::decode(&file(&[old])[..SLOT_SIZE]), Some(old), "a short file");
    }

    #[test]
    fn a_claim_about_an_older_segment_is_superseded() {
        let claim = Watermark { sequence: 1, segment_base: 100, synced: 4096 };
        assert_eq!(Watermark::synced_in(Some(&claim), 100), 4096);
        assert_eq!(Watermark::synced_in(Some(&claim), 200), 0);
        assert_eq!(Watermark::synced_in(None, 100), 0);
    }
}
