//! `kappa inspect DIR`: a table (or JSON) of partitions and their segments.

use std::path::Path;

use anyhow::Context;
use serde::Serialize;

#[derive(Serialize)]
struct SegmentJson {
    file: String,
    base_offset: u64,
    end_offset: u64,
    records: u64,
    size_bytes: u64,
    first_timestamp_ms: Option<i64>,
    max_timestamp_ms: Option<i64>,
    sealed: bool,
}

#[derive(Serialize)]
struct PartitionJson {
    topic: String,
    partition: u32,
    start_offset: u64,
    end_offset: u64,
    size_bytes: u64,
    segments: Vec<SegmentJson>,
    problems: Vec<String>,
}

pub fn run(dir: &Path, json: bool) -> anyhow::Result<()> {
    let partitions = kappa_storage::verify::scan_data_dir(dir)
        .with_context(|| format!("inspecting data dir {}", dir.display()))?;
    let out: Vec<PartitionJson> = partitions
        .iter()
        .map(|p| PartitionJson {
            topic: p.topic.clone(),
            partition: p.partition,
            start_offset: p.segments.first().map_or(0, |s| s.base_offset),
            end_offset: p.segments.last().map_or(0, |s| s.next_offset),
            size_bytes: p.segments.iter().map(|s| s.size_bytes).sum(),
            segments: p
                .segments
                .iter()
                .map(|s| SegmentJson {
                    file: s
                        .path
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    base_offset: s.base_offset,
                    end_offset: s.next_offset,
                    records: s.next_offset - s.base_offset,
                    size_bytes: s.size_bytes,
                    first_timestamp_ms: s.first_timestamp,
                    max_timestamp_ms: s.max_timestamp,
                    sealed: s.sealed,
                })
                .collect(),
            problems: p
                .problems
                .iter()
                .map(|q| format!("{} at byte {}: {}", q.path.display(), q.position, q.what))
                .collect(),
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if out.is_empty() {
        println!("no topics under {}", dir.display());
        return Ok(());
    }
    for p in &out {
        println!(
            "topic {} partition {}: offsets {}..{}, {} in {} segments",
            p.topic,
            p.partition,
            p.start_offset,
            p.end_offset,
            human_bytes(p.size_bytes),
            p.segments.len()
        );
        println!(
            "  {:<28} {:>12} {:>12} {:>10} {:>11} {:>15} {:>15} {:>6}",
            "segment", "base", "end", "records", "size", "first ts (ms)", "max ts (ms)", "sealed"
        );
        for s in &p.segments {
            println!(
                "  {:<28} {:>12} {:>12} {:>10} {:>11} {:>15} {:>15} {:>6}",
                s.file,
                s.base_offset,
                s.end_offset,
                s.records,
                human_bytes(s.size_bytes),
                s.first_timestamp_ms.map_or("-".to_string(), |t| t.to_string()),
                s.max_timestamp_ms.map_or("-".to_string(), |t| t.to_string()),
                if s.sealed { "yes" } else { "no" }
            );
        }
        for problem in &p.problems {
            println!("  problem: {problem}");
        }
    }
    Ok(())
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
