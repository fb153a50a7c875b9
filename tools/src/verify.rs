//! `kappa verify DIR`: read every frame, report problems with file and byte position.

use std::path::Path;

use anyhow::Context;

use crate::cli::{EXIT_CORRUPT, EXIT_OK};

pub fn run(dir: &Path, strict: bool, window_bytes: u64) -> anyhow::Result<i32> {
    let partitions = kappa_storage::verify::scan_data_dir_with(dir, window_bytes)
        .with_context(|| format!("verifying data dir {}", dir.display()))?;
    let mut corrupt = 0usize;
    let mut notices = 0usize;
    let mut bytes = 0u64;
    for partition in &partitions {
        for segment in &partition.segments {
            bytes += segment.size_bytes;
        }
        for problem in &partition.problems {
            let fatal = strict || !problem.recoverable;
            if fatal {
                corrupt += 1;
                println!(
                    "CORRUPT {} at byte {}: {}",
                    problem.path.display(),
                    problem.position,
                    problem.what
                );
            } else {
                notices += 1;
                println!(
                    "notice  {} at byte {}: {} (recoverable: the next open cuts it)",
                    problem.path.display(),
                    problem.position,
                    problem.what
                );
            }
        }
    }
    let segment_count: usize = partitions.iter().map(|p| p.segments.len()).sum();
    println!(
        "checked {} partitions, {} segments, {} bytes of frames: {} corrupt, {} notices",
        partitions.len(),
        segment_count,
        bytes,
        corrupt,
        notices
    );
    Ok(if corrupt > 0 { EXIT_CORRUPT } else { EXIT_OK })
}
