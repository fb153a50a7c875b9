//! Proof that scanning the log is allocation-free per record: a counting global allocator runs
//! under a full scan of a multi-segment log. Record iteration inside a batch must allocate exactly
//! nothing; the whole scan may allocate only per DMA read (glommio tasks and buffers), far below
//! one allocation per hundred records.

use kappa_storage::{Durability, LogConfig, PartitionLog, Record, Seek};

#[path = "support/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::allocations;

#[test]
fn scan_allocates_nothing_per_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig { segment_size_bytes_max: 4 << 20, ..LogConfig::default() };
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .make()
        .expect("executor")
        .run(async move {
            let log = PartitionLog::open(dir.path(), config).await.expect("open");
            let value = [7u8; 100];
            let records: Vec<Record<'_>> =
                (0..1000).map(|i| Record::new(i, Some(b"key"), &value)).collect();
            for _ in 0..200 {
                log.append(&records, Durability::None).await.expect("append");
            }
            log.sync().await.expect("sync");
            assert!(log.segments().len() > 3, "the scan crosses segments");

            let mut reader = log.reader(Seek::Beginning).expect("reader");
            let mut record_count = 0u64;
            let mut bytes = 0u64;
            let mut in_record_loops = 0u64;
            let before_scan = allocations();
            while let Some(batch) = reader.next_batch().await.expect("read") {
                let before_records = allocations();
                for record in batch.records() {
                    bytes += (record.value().len() + record.key().map_or(0, <[u8]>::len)) as u64;
                    record_count += 1;
                }
                in_record_loops += allocations() - before_records;
            }
            let scan_allocations = allocations() - before_scan;
            assert_eq!(record_count, 200_000);
            assert_eq!(bytes, 200_000 * 103);
            assert_eq!(in_record_loops, 0, "iterating records allocated");
            let per_record = scan_allocations as f64 / record_count as f64;
            eprintln!(
                "scan: {scan_allocations} allocations for {record_count} records ({per_record:.5}/record)"
            );
            assert!(per_record < 0.01, "{scan_allocations} allocations for {record_count} records");
            log.close().await.expect("close");
        });
}

/// The append path's synchronous half (offsets, the frame encoded into the write buffers, the
/// queue hand-off) allocates nothing per record, and nothing per append once warm: only the
/// sparse index's occasional growth and segment rolls allocate. The writer task runs between
/// appends, outside the count.
#[test]
fn append_allocates_nothing_per_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Small write buffers, so frames span buffers and the pool cycles; no roll while counting.
    let config = LogConfig {
        segment_size_bytes_max: 1 << 30,
        write_buffer_size_bytes: 256 * 1024,
        ..LogConfig::default()
    };
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(32 << 20)
        .make()
        .expect("executor")
        .run(async move {
            let log = PartitionLog::open(dir.path(), config).await.expect("open");
            let values: Vec<Vec<u8>> = (0..100).map(|i| vec![i as u8; 1000 + i]).collect();
            let headers = [kappa_storage::Header { key: b"h", value: Some(b"v") }];
            let mut records: Vec<Record<'_>> =
                values.iter().map(|v| Record::new(7, Some(b"key"), v)).collect();
            records[3].headers = &headers;
            let producer = kappa_storage::ProducerInfo::default();
            // Warm up: buffers in the pool, queues and the encoder's scratch at their sizes.
            for _ in 0..200 {
                log.reserve().await;
                let ticket =
                    log.append_now(&records, producer, Durability::None, 0).expect("append");
                let _ = log.wait(ticket).await.expect("wait");
            }
            let mut counted = 0u64;
            let appends = 2_000u64;
            for _ in 0..appends {
                log.reserve().await;
                let before = allocations();
                let ticket =
                    log.append_now(&records, producer, Durability::None, 0).expect("append");
                counted += allocations() - before;
                let _ = log.wait(ticket).await.expect("wait");
                glommio::yield_if_needed().await;
            }
            let records_appended = appends * records.len() as u64;
            eprintln!(
                "append: {counted} allocations in {appends} appends of {} records",
                records.len()
            );
            // The sparse index grows its Vec now and then (amortized doubling): a handful in all.
            assert!(
                counted <= 16,
                "{counted} allocations in {appends} appends ({records_appended} records)"
            );
            log.close().await.expect("close");
        });
}
