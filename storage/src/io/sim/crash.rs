//! The crash image of a power cut: what a simulated disk holds when it comes back.
//!
//! Per directory: the durable entries, then each change since the last fsync applied or not (in
//! order). Per file: the durable bytes, a size among those the file had since its last sync, and
//! per 512-byte sector written since then one of its versions (or none). Each file and directory
//! first draws a mode, so that whole-image extremes (everything kept, everything lost) come up as
//! often as mixtures.

use std::collections::BTreeMap;
use std::ffi::OsString;

use super::state::{
    apply_dir_op, apply_file_op, DirNode, FileNode, FileOp, Node, Rng, SimState, ROOT,
};
use super::FaultOptions;
use crate::io::SECTOR_SIZE;

enum Mode {
    /// Every change since the last sync survived.
    All,
    /// None did.
    None,
    /// Each one (each sector, for files) by a coin flip.
    Mixed,
}

fn mode(rng: &mut Rng) -> Mode {
    match rng.below(4) {
        0 => Mode::All,
        1 => Mode::None,
        _ => Mode::Mixed,
    }
}

fn crash_dir(dir: &DirNode, rng: &mut Rng) -> BTreeMap<OsString, u64> {
    let mut entries = dir.durable.clone();
    if dir.pending.is_empty() {
        return entries;
    }
    let mode = mode(rng);
    for op in &dir.pending {
        let keep = match mode {
            Mode::All => true,
            Mode::None => false,
            Mode::Mixed => rng.below(2) == 0,
        };
        if keep {
            apply_dir_op(&mut entries, op);
        }
    }
    entries
}

fn crash_file(file: &FileNode, rng: &mut Rng) -> Vec<u8> {
    if file.pending.is_empty() {
        return file.durable.clone();
    }
    let mode = mode(rng);
    match mode {
        Mode::All => return file.live.clone(),
        Mode::None => return file.durable.clone(),
        Mode::Mixed => {}
    }
    // Replay the changes, remembering every size and every version of every touched sector.
    let sector = SECTOR_SIZE;
    let mut current = file.durable.clone();
    let mut sizes = vec![current.len()];
    let mut versions: BTreeMap<usize, Vec<Vec<u8>>> = BTreeMap::new();
    for (_, op) in &file.pending {
        let touched = match op {
            FileOp::Write { pos, data } => {
                let pos = *pos as usize;
                pos / sector..(pos + data.len()).div_ceil(sector)
            }
            FileOp::SetLen(len) => {
                let len = *len as usize;
                len / sector..current.len().div_ceil(sector).max(len / sector)
            }
        };
        apply_file_op(&mut current, op);
        sizes.push(current.len());
        for s in touched {
            let start = (s * sector).min(current.len());
            let end = ((s + 1) * sector).min(current.len());
            versions.entry(s).or_default().push(current[start..end].to_vec());
        }
    }
    let size = sizes[rng.below(sizes.len() as u64) as usize];
    let mut image = file.durable.clone();
    image.resize(size, 0);
    for (s, versions) in versions {
        let pick = rng.below(versions.len() as u64 + 1) as usize;
        let start = s * sector;
        if pick == 0 || start >= size {
            continue;
        }
        let version = &versions[pick - 1];
        let end = (start + sector).min(size);
        image[start..end].fill(0);
        let n = version.len().min(end - start);
        image[start..start + n].copy_from_slice(&version[..n]);
    }
    image
}

/// The disk as it comes back after the power is cut: only what is reachable through the crash
/// image's directory entries, every inode's live and durable bytes equal to its crash image.
pub(super) fn image(st: &SimState, rng: &mut Rng) -> SimState {
    let mut out = SimState::new(st.seed ^ rng.next(), FaultOptions::default());
    out.nodes.clear();
    out.next_ino = st.next_ino;
    let mut stack = vec![ROOT];
    while let Some(ino) = stack.pop() {
        if out.nodes.contains_key(&ino) {
            continue; // A hard link reached it already (a rename that kept both names).
        }
        let node = match st.nodes.get(&ino) {
            Some(Node::Dir(dir)) => {
                let entries = crash_dir(dir, rng);
                stack.extend(entries.values().copied());
                Node::Dir(DirNode::with_entries(entries))
            }
            Some(Node::File(file)) => Node::File(FileNode::with_contents(crash_file(file, rng))),
            None => continue,
        };
        out.nodes.insert(ino, node);
    }
    out
}
