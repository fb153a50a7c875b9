//! Proof that folding a record into a view allocates nothing once its groups exist: a counting
//! global allocator runs under `PartitionState::apply` for every window kind, with a JSON map
//! (`map_json`) and a JSON key (`key_by_json`), including hopping windows past 64 per record and
//! sessions that a record extends, and exact sums in both their inline and wide forms. New keys, windows and sessions may allocate (they are new
//! state); the second pass over the same records opens none, so it must allocate exactly zero.

use kappa_engine::operator::{Aggregate, LatePolicy, Window};
use kappa_engine::view::PartitionState;
use kappa_engine::ViewDef;
use kappa_storage::{BatchEncoder, BatchRef, Limits, ProducerInfo, Record};
use rkyv::util::AlignedVec;

#[path = "../../storage/tests/support/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::allocations;

#[test]
fn folding_allocates_nothing_per_record() {
    let values: Vec<String> = (0..1000)
        .map(|i| format!(r#"{{"unit":"v","g":"g{}","nested":{{"v":1}},"v":{}.5}}"#, i % 10, i % 97))
        .collect();
    let keys: Vec<String> = (0..1000).map(|i| format!("key-{}", i % 10)).collect();
    let records: Vec<Record<'_>> = (0..1000)
        .map(|i| Record::new(10_000 + i as i64 * 3, Some(keys[i].as_bytes()), values[i].as_bytes()))
        .collect();
    let mut encoder = BatchEncoder::new(Limits::default());
    encoder.encode(0, &records, ProducerInfo::default()).expect("encodes");
    let mut frame = AlignedVec::<16>::new();
    frame.extend_from_slice(encoder.frame());
    let batch = BatchRef::from_frame(&frame).expect("valid");
    let windows = [
        Window::None,
        Window::Tumbling { size_ms: 100 },
        Window::Hopping { size_ms: 6450, hop_ms: 100 },
        Window::Session { gap_ms: 50 },
    ];
    // Mean over values the exact sum holds inline, and Sum over tiny values that move each
    // group's exact sum to its wide form on the first pass (one allocation per group, once).
    let cases = [(Aggregate::Mean, false), (Aggregate::Sum, true)];
    for window in windows {
        for (json_key, (aggregate, tiny)) in [false, true].into_iter().zip(cases.iter().cycle()) {
            let def = ViewDef::new("t").map_json("v");
            let def = if *tiny {
                def.map(|r| kappa_engine::operator::json_number(r.value(), "v").map(|v| v * 1e-20))
            } else {
                def
            };
            let mut def = def
                .window(window)
                .aggregate(aggregate.clone())
                .lateness(1 << 40, LatePolicy::Update);
            if json_key {
                def = def.key_by_json("g");
            }
            let mut state = PartitionState::new(0);
            for record in batch.records() {
                assert!(state.apply(&def, &record).is_ok());
            }
            let before = allocations();
            for record in batch.records() {
                assert!(state.apply(&def, &record).is_ok());
            }
            let allocated = allocations() - before;
            assert_eq!(
                allocated, 0,
                "{window:?} {aggregate:?} (json key: {json_key}): {allocated} allocations"
            );
            assert_eq!(state.counters.applied, 2000, "{window:?}");
        }
    }
}

/// The shard's append hand-off reads a `ProducerBatch` in place (`ProducerBatch::records_at`)
/// and the log encodes it straight into its write buffers: once warm, appending allocates
/// nothing per record and nothing per append (only the sparse index's occasional growth). The
/// writer task runs between appends, outside the count.
#[test]
fn appending_a_producer_batch_allocates_nothing_per_record() {
    use kappa_engine::ProducerBatch;
    use kappa_storage::{Durability, LogConfig, PartitionLog};

    let dir = tempfile::tempdir().expect("tempdir");
    let mut batch = ProducerBatch::new();
    for i in 0..500u32 {
        let value = vec![i as u8; 1024];
        if i % 50 == 0 {
            batch.push_with_headers(Some(&i.to_le_bytes()), &value, None, &[("h", Some(b"v"))]);
        } else {
            batch.push(Some(&i.to_le_bytes()), &value, Some(i64::from(i)));
        }
    }
    let config = LogConfig { segment_size_bytes_max: 1 << 30, ..LogConfig::default() };
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(32 << 20)
        .make()
        .expect("executor")
        .run(async move {
            let log = PartitionLog::open(dir.path(), config).await.expect("open");
            let producer = ProducerInfo::default();
            for _ in 0..50 {
                log.reserve().await;
                let ticket = log
                    .append_records(&batch.records_at(7), producer, Durability::None, 7)
                    .expect("append");
                let _ = log.wait(ticket).await.expect("wait");
            }
            let appends = 400u64;
            let mut counted = 0u64;
            for _ in 0..appends {
                log.reserve().await;
                let before = allocations();
                let ticket = log
                    .append_records(&batch.records_at(7), producer, Durability::None, 7)
                    .expect("append");
                counted += allocations() - before;
                let _ = log.wait(ticket).await.expect("wait");
                glommio::yield_if_needed().await;
            }
            eprintln!(
                "append: {counted} allocations in {appends} appends of {} records",
                batch.len()
            );
            assert!(counted <= 16, "{counted} allocations in {appends} appends");

            // What was appended reads back: a record with headers, one without a timestamp.
            let mut reader = log.reader(kappa_storage::Seek::Beginning).expect("reader");
            let read = reader.next_batch().await.expect("read").expect("a batch");
            let mut records = read.records();
            let first = records.next().expect("a record");
            assert_eq!(first.timestamp(), 7, "no timestamp: the append time");
            assert_eq!(first.headers().count(), 1);
            let second = records.next().expect("record 1");
            assert_eq!(second.timestamp(), 1);
            assert_eq!(second.value(), &[1u8; 1024][..]);
            drop(records);
            log.close().await.expect("close");
        });
}
