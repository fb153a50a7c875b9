//! Engine power-cut rounds: the whole engine (shards, producers, a view with frequent checkpoints,
//! topic and view metadata) on the simulated disk, the power cut at a seeded moment of a live
//! load, then a restart on the crash image, checked against an independent model:
//!
//! * the topic and the view survive (their metadata was synced before the load);
//! * every record acknowledged `synced` is there, at its offset, with its bytes;
//! * nothing corrupt is served: every record read back decodes to a value some producer sent;
//! * every view checkpoint written before the cut survives: each partition resumes at or after
//!   the newest checkpoint it had written, and the view then equals a count computed from the
//!   records read back (an independent reference, not the view itself).
//!
//! `KAPPA_POWERCUT_ROUNDS` (default `ROUNDS`, 300) sets the number of rounds (run on four
//! threads), `KAPPA_POWERCUT_SEED` replays one. Every failure names its seed.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kappa_engine::operator::{Aggregate, Window};
use kappa_engine::{Durability, Engine, ProducerRecord, Seek, TopicConfig, ViewDef, ViewHandle};
use kappa_storage::io::{Disk, FaultOptions, SimDisk};
use kappa_storage::LogConfig;

const DATA: &str = "/data";
const PARTITIONS: u32 = 2;
/// Rounds of `power_cut_rounds_keep_synced_records_and_view_checkpoints` in CI.
const ROUNDS: u64 = 300;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The value of record `seq`: the number and a filler derived from it, so any record read back
/// is checked without remembering it.
fn value(seq: u64) -> Vec<u8> {
    let mut rng = Rng(seq.wrapping_mul(0xA076_1D64_78BD_642F));
    let len = 8 + rng.below(200) as usize;
    let mut v = seq.to_le_bytes().to_vec();
    v.extend((8..len).map(|_| rng.next() as u8));
    v
}

fn decode(bytes: &[u8]) -> Option<u64> {
    let seq = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    (value(seq) == bytes).then_some(seq)
}

fn key(batch: u64) -> String {
    format!("k{}", batch % 7)
}

fn engine(disk: &SimDisk) -> Engine {
    Engine::builder()
        .data_dir(DATA)
        .shards(1)
        .log_config(LogConfig {
            segment_size_bytes_max: 16 * 1024,
            disk: Disk::Sim(disk.clone()),
            ..LogConfig::default()
        })
        .stall_probe_interval(None)
        .build()
        .expect("engine starts")
}

fn view_def(checkpoint_every: u64) -> ViewDef {
    ViewDef::new("p")
        .revision("count")
        .window(Window::None)
        .aggregate(Aggregate::Count)
        .checkpoint_every(checkpoint_every)
}

fn wait_caught_up(view: &ViewHandle, seed: u64) {
    for _ in 0..4_000 {
        let progress = view.progress().expect("progress");
        if progress.caught_up() && progress.lag() == 0 {
            return;
        }
        if let Some(error) = progress.partitions.iter().find_map(|p| p.error.clone()) {
            panic!("seed {seed}: the view failed after the restart: {error}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("seed {seed}: the view did not catch up after the restart");
}

/// One round; panics naming the seed on any broken guarantee. Returns (records acknowledged,
/// records recovered, checkpoints that had been written).
fn round(seed: u64) -> (usize, u64, usize) {
    let mut rng = Rng(seed);
    let disk = SimDisk::new(seed);
    let checkpoint_every = 10 + rng.below(100);
    let engine = engine(&disk);
    engine.create_topic("p", TopicConfig::new(PARTITIONS)).expect("topic");
    let view = engine.create_view("v", view_def(checkpoint_every)).expect("view");

    // (partition, offset, seq) of every record acknowledged `synced`.
    let acked: Arc<Mutex<Vec<(u32, u64, u64)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let producer = engine.producer().with_durability(Durability::Synced);
    let writer = {
        let (acked, stop) = (acked.clone(), stop.clone());
        let batch_max = 1 + rng.below(30);
        std::thread::spawn(move || {
            let mut seq = 0;
            for batch in 0.. {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let n = 1 + (batch * 7 + seed) % batch_max;
                let records: Vec<_> =
                    (seq..seq + n).map(|s| ProducerRecord::new(value(s)).key(key(batch))).collect();
                // One key per batch: one partition, records at base_offset + i.
                match producer.send_batch("p", records) {
                    Ok(acks) => {
                        let ack = acks[0];
                        let mut acked = acked.lock().expect("lock");
                        for i in 0..n {
                            acked.push((ack.partition, ack.base_offset + i, seq + i));
                        }
                    }
                    Err(_) => return, // the disk is gone
                }
                seq += n;
            }
        })
    };
    let target = 1 + rng.below(1_500) as usize;
    for _ in 0..20_000 {
        if acked.lock().expect("lock").len() >= target {
            break;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    // What must survive: acknowledged records and written checkpoints, read before the cut.
    let checkpointed: Vec<Option<u64>> =
        view.progress().expect("progress").partitions.iter().map(|p| p.checkpointed).collect();
    let acked_before: Vec<(u32, u64, u64)> = acked.lock().expect("lock").clone();
    let image = disk.power_cut(rng.next());
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");
    let _ = engine.shutdown(); // fails: the disk is gone
    drop(view);
    drop(engine);

    let engine = engine_restart(&image, seed);
    assert_eq!(
        engine.topics().get("p").map(|t| t.partitions),
        Some(PARTITIONS),
        "seed {seed}: the topic did not survive"
    );
    let mut recovered = 0;
    let mut counts: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    let mut read: BTreeMap<(u32, u64), u64> = BTreeMap::new();
    for partition in 0..PARTITIONS {
        let offsets = engine.partition_offsets("p", partition).expect("offsets");
        assert_eq!(offsets.start_offset, 0, "seed {seed}");
        let mut consumer = engine.consumer("p", partition, Seek::Beginning).expect("consumer");
        let mut next = 0;
        while consumer.position() < offsets.end_offset {
            let batch = consumer
                .next_batch_timeout(Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("seed {seed}: reading back: {e}"))
                .unwrap_or_else(|| panic!("seed {seed}: no batch in time"));
            for record in batch.records() {
                assert_eq!(record.offset(), next, "seed {seed}: offsets are not dense");
                next += 1;
                let seq = decode(record.value()).unwrap_or_else(|| {
                    panic!(
                        "seed {seed}: partition {partition} offset {} is corrupt",
                        record.offset()
                    )
                });
                read.insert((partition, record.offset()), seq);
                *counts.entry(record.key().expect("keyed").to_vec()).or_default() += 1;
                recovered += 1;
            }
        }
    }
    for (partition, offset, seq) in &acked_before {
        assert_eq!(
            read.get(&(*partition, *offset)),
            Some(seq),
            "seed {seed}: synced record {seq} at partition {partition} offset {offset} lost"
        );
    }
    let view = engine.create_view("v", view_def(checkpoint_every)).expect("view reopens");
    assert_eq!(view.version(), 1, "seed {seed}: the view's metadata did not survive");
    wait_caught_up(&view, seed);
    let progress = view.progress().expect("progress");
    for (p, before) in progress.partitions.iter().zip(&checkpointed) {
        if let Some(before) = before {
            assert!(
                p.resumed_from.is_some_and(|r| r >= *before),
                "seed {seed}: partition {} had a checkpoint at {before}; resumed from {:?}",
                p.partition,
                p.resumed_from
            );
        }
    }
    let rows: BTreeMap<Vec<u8>, u64> =
        view.rows().expect("rows").into_iter().map(|r| (r.key, r.value as u64)).collect();
    assert_eq!(rows, counts, "seed {seed}: the view differs from the records read back");
    engine.shutdown().expect("shutdown");
    (acked_before.len(), recovered, checkpointed.iter().flatten().count())
}

fn engine_restart(image: &SimDisk, seed: u64) -> Engine {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| engine(image)))
        .unwrap_or_else(|_| panic!("seed {seed}: the engine did not start on the crash image"))
}

#[test]
fn power_cut_rounds_keep_synced_records_and_view_checkpoints() {
    // `KAPPA_POWER_CUT_*` are the names these had before the storage family's were shared.
    let env = |name: &str| {
        let old = name.replace("POWERCUT", "POWER_CUT");
        std::env::var(name).or_else(|_| std::env::var(old)).ok().and_then(|v| v.parse::<u64>().ok())
    };
    let seeds: Vec<u64> = match env("KAPPA_POWERCUT_SEED") {
        Some(seed) => vec![seed],
        None => (1..=env("KAPPA_POWERCUT_ROUNDS").unwrap_or(ROUNDS)).collect(),
    };
    // A round mostly waits (engine start and stop, acknowledgements, the view catching up), so
    // rounds run on a few threads at once; each has its own simulated disk and engine.
    let workers = 4;
    let next = Arc::new(Mutex::new(seeds.clone().into_iter()));
    let totals: Vec<(usize, u64, usize)> = (0..workers)
        .map(|_| {
            let next = next.clone();
            std::thread::spawn(move || {
                let mut total = (0, 0, 0);
                loop {
                    let seed = next.lock().expect("seeds").next();
                    let Some(seed) = seed else { return total };
                    let (a, r, c) = round(seed);
                    total = (total.0 + a, total.1 + r, total.2 + c);
                }
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|worker| worker.join().expect("a round failed (its seed is printed above)"))
        .collect();
    let acked: usize = totals.iter().map(|t| t.0).sum();
    let recovered: u64 = totals.iter().map(|t| t.1).sum();
    let checkpoints: usize = totals.iter().map(|t| t.2).sum();
    println!(
        "{} power-cut rounds on {workers} threads: {acked} synced records acknowledged before \
         the cuts, {recovered} recovered, {checkpoints} partitions with a checkpoint written \
         before the cut",
        seeds.len()
    );
    assert!(checkpoints > 0, "no round cut the power after a checkpoint");
}

/// A view swap that `Rebuild::wait_swapped` acknowledged survives a power cut: after a restart
/// the stored served version is the rebuilt one (the swap's record of it in `meta.json` was
/// written and synced before the acknowledgement). Several seeds, so a crash image that reverts
/// unsynced changes is among them.
#[test]
fn an_acknowledged_view_swap_survives_a_power_cut() {
    for seed in 1..=8u64 {
        let disk = SimDisk::new(seed);
        let engine = engine(&disk);
        engine.create_topic("p", TopicConfig::new(PARTITIONS)).expect("topic");
        let producer = engine.producer().with_durability(Durability::Synced);
        let records = (0..200).map(|s| ProducerRecord::new(value(s)).key(key(s))).collect();
        producer.send_batch("p", records).expect("send");
        let view = engine.create_view("v", view_def(50)).expect("view");
        wait_caught_up(&view, seed);
        let rebuild = engine.rebuild_view("v", view_def(50).revision("count-2")).expect("rebuild");
        rebuild.wait_swapped(Duration::from_secs(60)).expect("swapped");
        assert_eq!(rebuild.version(), 2);
        let image = disk.power_cut(seed);
        let _ = engine.shutdown();
        drop(engine);
        let stored = kappa_engine::stored_view(&Disk::Sim(image.clone()), Path::new(DATA), "v")
            .unwrap_or_else(|e| panic!("seed {seed}: the view's metadata is damaged: {e}"))
            .unwrap_or_else(|| panic!("seed {seed}: the view's metadata is gone"));
        assert_eq!(stored.served, 2, "seed {seed}: the acknowledged swap was lost");
        let engine = engine_restart(&image, seed);
        engine.shutdown().expect("shutdown");
    }
    // Every file went through the seam: nothing of the simulated data dir is on the real disk
    // (a version's `shape` file once was, which fails for a user who cannot write `/data`).
    let real = Path::new(DATA).join("views/v");
    assert!(!real.exists(), "a simulated engine wrote {} on the real disk", real.display());
}

/// A view creation and a rebuild, once acknowledged, are recorded through a power cut right
/// after them (before any checkpoint or swap could sync the view's directory for them): the
/// restarted data dir knows the view and both version numbers, so a number is never reused.
#[test]
fn acknowledged_view_metadata_survives_a_power_cut() {
    let never = 1 << 40; // no checkpoint: only the metadata write syncs the view's directory
    for seed in 1..=8u64 {
        let disk = SimDisk::new(seed);
        let engine = engine(&disk);
        engine.create_topic("p", TopicConfig::new(PARTITIONS)).expect("topic");
        let producer = engine.producer().with_durability(Durability::Synced);
        let records = (0..100).map(|s| ProducerRecord::new(value(s)).key(key(s))).collect();
        producer.send_batch("p", records).expect("send");
        engine.create_view("v", view_def(never)).expect("view");
        let image = disk.power_cut(seed);
        let _ = engine.shutdown();
        drop(engine);
        let stored = kappa_engine::stored_view(&Disk::Sim(image.clone()), Path::new(DATA), "v")
            .unwrap_or_else(|e| panic!("seed {seed}: damaged view metadata: {e}"));
        let revisions = stored.map(|s| s.revisions.into_keys().collect::<Vec<_>>());
        assert_eq!(revisions, Some(vec![1]), "seed {seed}: the created view was lost");

        let engine = engine_restart(&image, seed);
        engine.create_view("v", view_def(never)).expect("view");
        let slow = view_def(never).revision("slow").filter(|_| {
            // Slow, so the rebuild cannot catch up (and record a swap) before the cut.
            std::thread::sleep(Duration::from_millis(5));
            true
        });
        let rebuild = engine.rebuild_view("v", slow).expect("rebuild");
        assert_eq!(rebuild.version(), 2);
        let image2 = image.power_cut(seed + 100);
        let _ = engine.shutdown();
        drop(engine);
        let stored = kappa_engine::stored_view(&Disk::Sim(image2), Path::new(DATA), "v")
            .unwrap_or_else(|e| panic!("seed {seed}: damaged view metadata: {e}"))
            .unwrap_or_else(|| panic!("seed {seed}: the view was lost"));
        assert!(
            stored.revisions.contains_key(&2),
            "seed {seed}: the acknowledged rebuild (version 2) was not recorded: {stored:?}"
        );
    }
}

/// A poison record's failure is durable before anyone sees `Error::Poisoned`: a power cut right
/// after it still holds the version failed, so a restart does not run the record again. The
/// metadata fsync is slowed, so a failure reported before its write finished is lost by the cut.
#[test]
fn a_poison_failure_is_durable_before_it_is_reported() {
    let disk = SimDisk::new(7);
    let engine = engine(&disk);
    engine.create_topic("p", TopicConfig::new(1)).expect("topic");
    let def = ViewDef::new("p")
        .map(|r: &kappa_engine::RecordRef<'_>| {
            assert!(r.value() != b"poison", "boom: a poison record");
            Some(1.0)
        })
        .aggregate(Aggregate::Sum);
    let view = engine.create_view("v", def).expect("view");
    disk.set_faults(FaultOptions {
        fsync_latency: Duration::from_millis(300),
        ..Default::default()
    });
    let producer = engine.producer().with_durability(Durability::Synced);
    producer.send("p", ProducerRecord::new("fine").key("k")).expect("send");
    producer.send("p", ProducerRecord::new("poison").key("k")).expect("send");
    let end = view.log_end().expect("log end");
    match view.wait_for(end, Duration::from_secs(60)) {
        Err(kappa_engine::Error::Poisoned { offset: 1, .. }) => {}
        other => {
            panic!("expected the poison failure at offset 1, got {other:?}: {:?}", view.progress())
        }
    }
    let image = disk.power_cut(7);
    let _ = engine.shutdown();
    drop(engine);
    let stored = kappa_engine::stored_view(&Disk::Sim(image), Path::new(DATA), "v")
        .expect("the view's metadata reads")
        .expect("the view is stored");
    let failure = stored.failed.get(&1);
    assert_eq!(
        failure.and_then(|f| f.offset),
        Some(1),
        "the reported failure was lost: {stored:?}"
    );
}

/// A checkpoint of a view with more groups than one snapshot step (the shard copies them over
/// several steps, yielding between them, while records keep arriving) is a cut at one offset:
/// after a power cut in the middle of the load the view resumes from its newest checkpoint and
/// then equals a count of the records read back (a torn cut would count some records twice).
/// The preempt timer is short (100 us), so the copy yields between its steps.
#[test]
fn a_large_view_resumes_from_a_checkpoint_taken_under_load() {
    const KEYS: u64 = 20_000; // ten snapshot steps of groups
    let seed = 7;
    let disk = SimDisk::new(seed);
    let engine = Engine::builder()
        .data_dir(DATA)
        .shards(1)
        .log_config(LogConfig {
            segment_size_bytes_max: 256 * 1024,
            disk: Disk::Sim(disk.clone()),
            ..LogConfig::default()
        })
        .live_latency_budget(Duration::from_micros(500))
        .stall_probe_interval(None)
        .build()
        .expect("engine starts");
    engine.create_topic("big", TopicConfig::new(1)).expect("topic");
    let def = || {
        ViewDef::new("big")
            .revision("count")
            .window(Window::None)
            .aggregate(Aggregate::Count)
            .checkpoint_every(3_000)
    };
    let view = engine.create_view("v", def()).expect("view");
    let stop = Arc::new(AtomicBool::new(false));
    let producer = engine.producer().with_durability(Durability::Synced);
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            for chunk in 0u64.. {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let records = (chunk * 100..chunk * 100 + 100)
                    .map(|s| ProducerRecord::new(value(s)).key(format!("key-{}", s * 7_919 % KEYS)))
                    .collect();
                if producer.send_batch("big", records).is_err() {
                    return; // the disk is gone
                }
            }
        })
    };
    let mut checkpointed = None;
    for _ in 0..6_000 {
        checkpointed = view.progress().expect("progress").partitions[0].checkpointed;
        if checkpointed.is_some_and(|c| c >= 30_000) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let checkpointed = checkpointed.expect("a checkpoint was written");
    let image = disk.power_cut(seed);
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");
    let _ = engine.shutdown();
    drop(view);
    drop(engine);

    let engine = engine_restart(&image, seed);
    let mut counts: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    let end = engine.partition_offsets("big", 0).expect("offsets").end_offset;
    let mut consumer = engine.consumer("big", 0, Seek::Beginning).expect("consumer");
    while consumer.position() < end {
        let batch = consumer.next_batch_timeout(Duration::from_secs(10)).expect("read");
        for record in batch.expect("in time").records() {
            *counts.entry(record.key().expect("keyed").to_vec()).or_default() += 1;
        }
    }
    let view = engine.create_view("v", def()).expect("view reopens");
    wait_caught_up(&view, seed);
    let resumed = view.progress().expect("progress").partitions[0].resumed_from;
    assert!(
        resumed.is_some_and(|r| r >= checkpointed),
        "resumed from {resumed:?}; a checkpoint at {checkpointed} was written"
    );
    let rows: BTreeMap<Vec<u8>, u64> =
        view.rows().expect("rows").into_iter().map(|r| (r.key, r.value as u64)).collect();
    assert_eq!(rows, counts, "the view resumed from its checkpoint differs from the records");
    engine.shutdown().expect("shutdown");
}

/// Producer ids the Kafka front end handed out are never handed out again after a power cut
/// right after them: their reservation (`DIR/kafka/producer-ids`) goes through the engine's
/// disk, the simulated one here, with its directory created durably. It once went through
/// `std::fs` beside the seam: the simulator never saw it (as root it landed on the real disk
/// under `/data`; otherwise the server failed to start).
#[test]
fn kafka_producer_ids_are_reserved_on_the_engines_disk_through_a_power_cut() {
    use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse};
    use kappa_engine::kafka::client::Client;
    use kappa_engine::kafka::{KafkaConfig, KafkaServer};
    let new_id = |engine: &Arc<Engine>| {
        let addr = "127.0.0.1:0".parse().expect("addr");
        let kafka = KafkaServer::start(engine, KafkaConfig::new(addr)).expect("kafka starts");
        let mut client = Client::connect(kafka.local_addr()).expect("connect");
        let request = InitProducerIdRequest::default().with_transaction_timeout_ms(60_000);
        let response: InitProducerIdResponse = client.call(4, &request).expect("init");
        assert_eq!(response.error_code, 0, "{response:?}");
        (kafka, response.producer_id.0)
    };
    for seed in 1..=4u64 {
        let disk = SimDisk::new(seed);
        let engine = Arc::new(engine(&disk));
        let (kafka, first) = new_id(&engine);
        let image = disk.power_cut(seed);
        kafka.stop();
        let _ = engine.shutdown();
        drop(engine);

        let engine = Arc::new(engine_restart(&image, seed));
        let (kafka, next) = new_id(&engine);
        assert!(next > first, "seed {seed}: producer id {first} handed out again as {next}");
        kafka.stop();
        engine.shutdown().expect("shutdown");
    }
    let real = Path::new(DATA).join("kafka");
    assert!(!real.exists(), "a simulated engine wrote {} on the real disk", real.display());
}
