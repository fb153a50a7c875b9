//! `SealedSegment` and `SegmentReader`: a sealed segment read by another executor, in ranges,
//! with bounded read-ahead and every frame's checksum verified.

use super::*;
use crate::{ReadAhead, SealedSegment, SegmentReader};

const _: fn() = || {
    fn send<T: Send>() {}
    send::<SealedSegment>();
};

/// The offsets and checked values a `SegmentReader` returns for `[from, to)`.
async fn read_range(segment: SealedSegment, from: u64, to: u64, depth: usize) -> (Vec<u64>, usize) {
    let mut reader =
        SegmentReader::open(segment, from, to, ReadAhead::new(depth)).await.expect("open");
    let mut seen = Vec::new();
    while let Some(batch) = reader.next_batch().await.expect("read") {
        for record in batch.records() {
            let offset = record.offset();
            assert_eq!(record.value(), &value_for(offset, record.value().len())[..]);
            assert_eq!(record.timestamp(), 1_000 + offset as i64);
            seen.push(offset);
        }
    }
    assert_eq!(reader.next_offset(), to);
    (seen, reader.disk_reads_peak())
}

/// Runs `f` on a glommio executor of its own, on another thread: nothing but the `Send`
/// descriptions cross over.
fn on_another_executor<T: Send + 'static>(
    f: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>> + Send + 'static,
) -> T {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(4 << 20)
        .spawn(f)
        .expect("executor")
        .join()
        .expect("the other executor")
}

#[test]
fn sealed_segments_are_read_in_ranges_by_another_executor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let segments = run(async {
        let log = PartitionLog::open(dir.path(), small_config()).await.expect("open");
        fill(&log, 60, 25, Durability::Written).await;
        let sealed = log.sealed_segments();
        let all = log.segments();
        assert_eq!(sealed.len(), all.len() - 1, "every segment but the active one is sealed");
        for (s, info) in sealed.iter().zip(&all) {
            assert_eq!((s.base_offset(), s.next_offset()), (info.base_offset, info.next_offset));
            assert_eq!(s.path, info.path);
        }
        log.close().await.expect("close");
        sealed
    });
    assert!(segments.len() >= 3, "{} sealed segments", segments.len());
    let results = on_another_executor(move || {
        Box::pin(async move {
            let mut results = Vec::new();
            for segment in &segments {
                let (base, next) = (segment.base_offset(), segment.next_offset());
                // Whole, a middle slice at arbitrary offsets (inside frames), and empty.
                for (from, to) in [(base, next), (base + 7, next - 3), (base + 5, base + 5)] {
                    let (seen, peak) = read_range(segment.clone(), from, to, 4).await;
                    results.push((from, to, seen, peak));
                }
            }
            // Out of the segment's offsets: a typed error naming the bounds.
            let first = segments[0].clone();
            let beyond = first.next_offset() + 1;
            let refused = SegmentReader::open(first, 0, beyond, ReadAhead::new(1)).await;
            assert!(
                matches!(refused, Err(Error::OffsetOutOfRange { requested, .. }) if requested == beyond)
            );
            results
        })
    });
    for (from, to, seen, peak) in results {
        assert_eq!(seen, (from..to).collect::<Vec<_>>(), "range {from}..{to}");
        assert!(peak <= 4, "at most the read-ahead in flight: {peak}");
    }
}

#[test]
fn read_ahead_bounds_the_reads_in_flight() {
    let dir = tempfile::tempdir().expect("tempdir");
    run(async {
        let log = PartitionLog::open(dir.path(), small_config()).await.expect("open");
        fill(&log, 40, 25, Durability::Written).await;
        let segment = log.sealed_segments().remove(0);
        let (base, next) = (segment.base_offset(), segment.next_offset());
        // 8 KiB reads over a segment of about 64 KiB: several reads to plan.
        let (seen, peak) = read_range(segment.clone(), base, next, 1).await;
        assert_eq!(seen.len() as u64, next - base);
        assert_eq!(peak, 1, "one read ahead at a time");
        let (seen, peak) = read_range(segment, base, next, 3).await;
        assert_eq!(seen.len() as u64, next - base);
        assert!((2..=3).contains(&peak), "up to three reads ahead: {peak}");
        log.close().await.expect("close");
    });
}

#[test]
fn a_damaged_frame_in_a_sealed_segment_is_an_error_naming_file_and_position() {
    let dir = tempfile::tempdir().expect("tempdir");
    let segment = run(async {
        let log = PartitionLog::open(dir.path(), small_config()).await.expect("open");
        fill(&log, 40, 25, Durability::Written).await;
        let segment = log.sealed_segments().remove(1);
        log.close().await.expect("close");
        segment
    });
    // One byte inside the second indexed frame's archive.
    let position = u64::from(segment.index.entries[1].position) + 100;
    let mut bytes = std::fs::read(&segment.path).expect("read");
    bytes[position as usize] ^= 0x40;
    std::fs::write(&segment.path, &bytes).expect("write");
    let frame = u64::from(segment.index.entries[1].position);
    let path = segment.path.clone();
    let error = run(async move {
        let (base, next) = (segment.base_offset(), segment.next_offset());
        let mut reader =
            SegmentReader::open(segment, base, next, ReadAhead::new(2)).await.expect("open");
        loop {
            match reader.next_batch().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(e) => return Some(e),
            }
        }
    });
    match error {
        Some(Error::Corrupt { path: p, position: at, .. }) => {
            assert_eq!(p, path);
            assert_eq!(at, frame, "the damaged frame's start");
        }
        other => panic!("expected a checksum error, got {other:?}"),
    }
}
