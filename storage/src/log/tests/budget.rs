//! The replay read budget (`reader::budget`): readers sharing one `ReadAhead` keep at most its
//! depth of disk reads in flight together, and while a log write is in flight on the executor
//! they keep at most one; each rule has a test that fails without it. Reads and writes sleep on
//! the simulated disk, so they are in flight long enough to overlap.

use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use super::*;
use crate::io::{Disk, FaultOptions, SimDisk};
use crate::{ReadAhead, SegmentReader};

const READERS: usize = 4;
const DEPTH: usize = 3;

/// A log of many small sealed segments on a simulated disk whose reads take up to 2 ms and
/// whose writes take 3 ms.
async fn slow_log(sim: &SimDisk) -> PartitionLog {
    let config = LogConfig { disk: Disk::Sim(sim.clone()), ..small_config() };
    let log = PartitionLog::open(&PathBuf::from("/data/topics/t/0"), config).await.expect("open");
    fill(&log, 120, 25, Durability::Written).await;
    sim.set_faults(FaultOptions {
        latency_probability: 1.0,
        latency_max: Duration::from_millis(2),
        write_latency: Duration::from_millis(3),
        ..FaultOptions::default()
    });
    log
}

/// `READERS` range readers over the sealed segments, all on `budget`, read to the end; returns
/// the records read.
async fn read_sealed(log: &PartitionLog, budget: &ReadAhead) -> u64 {
    let segments = log.sealed_segments();
    assert!(segments.len() >= READERS, "{} sealed segments", segments.len());
    let tasks: Vec<_> = segments
        .into_iter()
        .take(READERS)
        .map(|segment| {
            let budget = budget.clone();
            glommio::spawn_local(async move {
                let (from, to) = (segment.base_offset(), segment.next_offset());
                let mut reader =
                    SegmentReader::open(segment, from, to, budget).await.expect("open");
                let mut records = 0;
                while let Some(batch) = reader.next_batch().await.expect("read") {
                    records += batch.records().count() as u64;
                }
                assert_eq!(reader.next_offset(), to);
                records
            })
        })
        .collect();
    let mut records = 0;
    for task in tasks {
        records += task.await;
    }
    records
}

#[test]
fn readers_of_one_budget_keep_its_depth_in_flight_together() {
    run(async {
        let sim = SimDisk::new(11);
        let log = slow_log(&sim).await;
        let budget = ReadAhead::new(DEPTH);
        assert!(read_sealed(&log, &budget).await > 0);
        let stats = budget.stats();
        assert_eq!(stats.in_flight, 0, "{stats:?}");
        // Each reader alone would keep DEPTH in flight: READERS * DEPTH together.
        assert_eq!(stats.in_flight_peak, DEPTH, "the budget was filled, never overrun: {stats:?}");
        assert!(stats.waits > 0, "readers waited for room: {stats:?}");
        log.close().await.expect("close");
    });
}

#[test]
fn while_a_log_write_is_in_flight_replay_keeps_one_read_in_flight() {
    run(async {
        let sim = SimDisk::new(12);
        let log = Rc::new(slow_log(&sim).await);
        let budget = ReadAhead::new(DEPTH);
        let writer = {
            let log = log.clone();
            glommio::spawn_local(async move { fill(&log, 40, 5, Durability::Written).await })
        };
        assert!(read_sealed(&log, &budget).await > 0);
        writer.await;
        assert_eq!(crate::writes_pending(), 0);
        let stats = budget.stats();
        assert!(stats.reads_while_writing > 0, "reads met writes: {stats:?}");
        assert_eq!(stats.in_flight_peak_while_writing, 1, "{stats:?}");
        log.close().await.expect("close");
    });
}

/// Review 21 (hostile): the count of log writes in flight (`writes_pending`, which makes replay
/// hand the reactor turns) returns to zero after a failed write fences a log, and after a log is
/// closed with writes still in flight: a count left above zero would tax replay forever.
#[test]
fn a_failed_write_or_a_close_with_writes_in_flight_leaves_no_write_pending() {
    run(async {
        let sim = SimDisk::new(13);
        let log = slow_log(&sim).await;
        sim.fail_next(crate::io::FaultKind::WriteEio);
        let record = [Record::new(0, None, b"x")];
        log.append(&record, Durability::Written).await.expect_err("the write failed");
        let _ = log.close().await;
        assert_eq!(crate::writes_pending(), 0, "after a failed write");

        let log = slow_log(&SimDisk::new(14)).await;
        for _ in 0..20 {
            log.append(&record, Durability::None).await.expect("append");
        }
        // The writer submits (the simulated writes take 3 ms).
        glommio::timer::sleep(Duration::from_millis(1)).await;
        assert!(crate::writes_pending() > 0, "writes were in flight at the close");
        log.close().await.expect("close");
        assert_eq!(crate::writes_pending(), 0, "after a close with writes in flight");
    });
}
