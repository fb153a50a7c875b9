//! Power-cut rounds: a seeded workload on a `PartitionLog` over the simulated disk, the power cut
//! at a seeded operation, recovery of the crash image, and the guarantees checked against an
//! independent model of what was appended:
//!
//! * every record acknowledged `synced` survives, with its bytes (unless retention took it);
//! * offsets stay dense from the start offset to the end offset;
//! * nothing else is served: every record read (live, and after recovery) has exactly the bytes
//!   its appender gave that offset;
//! * recovery never refuses a log that only a power cut damaged, and the recovered log takes
//!   appends again (a second workload and power cut run on every crash image).
//!
//! The workload: several appenders with mixed durabilities and batch sizes (frames from a few
//! bytes to longer than a write buffer), small segments (many rolls), size retention under a
//! random floor, a live reader, deterministic yields that interleave completions, and in some
//! rounds injected EIO on writes and syncs (which fence the log).
//!
//! `KAPPA_POWERCUT_ROUNDS` (default 300) sets the number of rounds and `KAPPA_POWERCUT_FIRST_SEED`
//! (default 1) where their seeds start; `KAPPA_POWERCUT_SEED` replays one. Every failure names its
//! seed.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use kappa_storage::io::{Disk, FaultOptions, SimDisk};
use kappa_storage::{Durability, LogConfig, PartitionLog, ProducerInfo, Record, Retention, Seek};

const DIR: &str = "/data/topics/t/0";
const ROUND_TIMEOUT: Duration = Duration::from_secs(60);

/// splitmix64, for the workload's own decisions.
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

/// The value every record at `offset` carries: its length and bytes depend only on the offset, so
/// any record read back can be checked without remembering it.
fn value_for(offset: u64) -> Vec<u8> {
    let mut rng = Rng(offset.wrapping_mul(0xA076_1D64_78BD_642F));
    let len = match rng.below(8) {
        0 => 0,
        1 => 2000 + rng.below(5000) as usize, // longer than a write buffer
        _ => rng.below(300) as usize,
    };
    (0..len).map(|_| rng.next() as u8).collect()
}

fn config(disk: &SimDisk, rng: &mut Rng) -> LogConfig {
    LogConfig {
        segment_size_bytes_max: 24 * 1024,
        index_interval_bytes: 2048,
        write_buffer_size_bytes: 4096,
        write_in_flight_max: 1 + rng.below(4) as usize,
        write_queue_max: 4,
        read_buffer_size_bytes: 8192,
        read_ahead_max: 2,
        tail_cache_buffers_max: rng.below(3) as usize,
        unsynced_bytes_max: 8192 + 4096 * rng.below(3),
        preallocate_bytes: 4096 * rng.below(4),
        retention: Retention { size_bytes_max: Some(96 * 1024), age_ms_max: None },
        disk: Disk::Sim(disk.clone()),
        ..LogConfig::default()
    }
}

/// What the workload was told: offsets acknowledged `synced`.
#[derive(Default)]
struct Acked {
    synced: BTreeSet<u64>,
    appended_end: u64,
}

/// What the rounds exercised, printed at the end so a reader can see the test is not vacuous.
#[derive(Default, Debug)]
struct Coverage {
    recoveries: u64,
    torn_tails_cut: u64,
    indexes_rebuilt: u64,
    segments_seen: u64,
    retention_deletes: u64,
    cuts_during_recovery: u64,
    fenced: u64,
}

thread_local! {
    static COVERAGE: RefCell<Coverage> = RefCell::new(Coverage::default());
}

fn cover(f: impl FnOnce(&mut Coverage)) {
    COVERAGE.with(|c| f(&mut c.borrow_mut()));
}

fn fail(seed: u64, what: String) -> ! {
    panic!(
        "power-cut round with seed {seed}: {what}\n  replay: KAPPA_POWERCUT_SEED={seed} \
         cargo test -p kappa-storage --test powercut"
    )
}

/// Reads the whole log and checks density and bytes; returns the offsets read.
async fn read_and_check(seed: u64, log: &PartitionLog, phase: &str) -> (u64, u64) {
    let start = log.start_offset();
    let mut reader = match log.reader(Seek::Beginning) {
        Ok(reader) => reader,
        Err(e) => fail(seed, format!("{phase}: reader: {e}")),
    };
    let mut next = start;
    loop {
        let batch = match reader.next_batch().await {
            Ok(Some(batch)) => batch,
            Ok(None) => break,
            Err(e) => fail(seed, format!("{phase}: read at {next}: {e}")),
        };
        for record in batch.records() {
            if record.offset() != next {
                fail(seed, format!("{phase}: offsets not dense: {} after {next}", record.offset()));
            }
            if record.value() != value_for(next).as_slice() {
                fail(seed, format!("{phase}: offset {next} served with the wrong bytes"));
            }
            if record.key() != Some(&next.to_le_bytes()[..]) {
                fail(seed, format!("{phase}: offset {next} served with the wrong key"));
            }
            next += 1;
        }
    }
    if next != log.readable_end_offset() {
        fail(
            seed,
            format!("{phase}: read up to {next}, readable end {}", log.readable_end_offset()),
        );
    }
    (start, next)
}

/// Appends from several tasks until `budget` batches are done or the disk dies; retention and a
/// live reader run alongside.
async fn workload(seed: u64, log: Rc<PartitionLog>, rng: &mut Rng, budget: u64) -> Acked {
    let acked = Rc::new(RefCell::new(Acked::default()));
    let appenders = 1 + rng.below(4);
    let mut tasks = Vec::new();
    for a in 0..appenders {
        let log = log.clone();
        let acked = acked.clone();
        let mut rng = Rng(seed ^ (a + 1).wrapping_mul(0xD6E8_FEB8_6659_FD93));
        let batches = budget / appenders + 1;
        tasks.push(glommio::spawn_local(async move {
            for _ in 0..batches {
                log.reserve().await;
                let durability = match rng.below(3) {
                    0 => Durability::None,
                    1 => Durability::Written,
                    _ => Durability::Synced,
                };
                let count = 1 + rng.below(6);
                let base = log.end_offset();
                let values: Vec<Vec<u8>> = (base..base + count).map(value_for).collect();
                let keys: Vec<[u8; 8]> = (base..base + count).map(u64::to_le_bytes).collect();
                let records: Vec<Record<'_>> = (0..count as usize)
                    .map(|i| Record::new((base + i as u64) as i64, Some(&keys[i]), &values[i]))
                    .collect();
                let ticket = match log.append_now(
                    &records,
                    ProducerInfo::default(),
                    durability,
                    base as i64,
                ) {
                    Ok(ticket) => ticket,
                    Err(_) => return, // The disk died or a fault fenced the log.
                };
                assert_eq!(ticket.info.base_offset, base, "seed {seed}: offsets assigned in order");
                acked.borrow_mut().appended_end = base + count;
                match log.wait(ticket).await {
                    Ok(info) if durability == Durability::Synced => {
                        acked.borrow_mut().synced.extend(info.base_offset..=info.last_offset);
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        }));
    }
    let retention = {
        let log = log.clone();
        let floor = if rng.below(2) == 0 { u64::MAX } else { rng.below(400) };
        glommio::spawn_local(async move {
            for _ in 0..4 {
                futures_lite::future::yield_now().await;
                let before = log.start_offset();
                match log.apply_retention(0, floor).await {
                    Ok(report) => cover(|c| c.retention_deletes += report.segments_deleted as u64),
                    Err(_) => return,
                }
                let start = log.start_offset();
                assert!(
                    start == before || start <= floor,
                    "seed {seed}: retention moved the start to {start}, past the floor {floor}"
                );
            }
        })
    };
    let reader = {
        let log = log.clone();
        glommio::spawn_local(async move {
            let mut reader = match log.reader(Seek::Beginning) {
                Ok(reader) => reader,
                Err(_) => return,
            };
            loop {
                match reader.next_batch().await {
                    Ok(Some(batch)) => {
                        for record in batch.records() {
                            let offset = record.offset();
                            assert_eq!(
                                record.value(),
                                value_for(offset).as_slice(),
                                "seed {seed}: live read of {offset}"
                            );
                        }
                    }
                    Ok(None) => {
                        if log.wait_readable(reader.next_offset()).await.is_err() {
                            return;
                        }
                    }
                    // Retention overtook the reader, or the disk died: both end this reader.
                    Err(_) => return,
                }
            }
        })
    };
    for task in tasks {
        task.await;
    }
    retention.await;
    if log.is_fenced() {
        cover(|c| c.fenced += 1);
    }
    let _ = log.close().await;
    reader.await;
    Rc::try_unwrap(acked).map_err(|_| ()).expect("tasks are done").into_inner()
}

/// How one generation runs.
struct Plan {
    /// Faults during the workload (the freeze is added).
    faults: FaultOptions,
    /// The power goes out this many operations into the workload (`None`: no workload, no cut).
    cut_after: Option<u64>,
    /// Or this many operations into recovery.
    cut_in_open: Option<u64>,
    budget: u64,
}

/// One generation: open (recovering) and check the crash image, then run the workload until the
/// seeded power cut, and return the new crash image.
async fn generation(
    seed: u64,
    disk: SimDisk,
    rng: &mut Rng,
    plan: Plan,
    previous: &Acked,
    phase: &str,
) -> (SimDisk, Acked) {
    let config = config(&disk, rng);
    let ops = disk.stats().ops;
    disk.set_faults(FaultOptions {
        freeze_after_ops: plan.cut_in_open.map(|n| ops + n),
        ..FaultOptions::default()
    });
    let log = match PartitionLog::open(Path::new(DIR), config).await {
        Ok(log) => log,
        // The power went out while recovering: nothing new was acknowledged.
        Err(_) if !disk.is_alive() => {
            cover(|c| c.cuts_during_recovery += 1);
            return (disk.power_cut(rng.next()), Acked::default());
        }
        Err(e) => fail(seed, format!("{phase}: recovery refused the crash image: {e}")),
    };
    disk.set_faults(FaultOptions::default());
    cover(|c| {
        c.recoveries += 1;
        c.torn_tails_cut += u64::from(log.recovery().truncated_bytes > 0);
        c.indexes_rebuilt += log.recovery().indexes_rebuilt as u64;
        c.segments_seen += log.recovery().segment_count as u64;
    });
    let (start, end) = read_and_check(seed, &log, phase).await;
    if end != log.end_offset() {
        fail(seed, format!("{phase}: end offset {} but read to {end}", log.end_offset()));
    }
    if let Some(lost) = previous.synced.iter().find(|o| **o >= start && **o >= end) {
        fail(seed, format!("{phase}: synced offset {lost} lost (log holds {start}..{end})"));
    }
    if end > previous.appended_end.max(start) {
        fail(seed, format!("{phase}: log ends at {end}, past everything appended"));
    }
    let Some(cut_after) = plan.cut_after else {
        log.close().await.unwrap_or_else(|e| fail(seed, format!("{phase}: close: {e}")));
        return (disk, Acked::default());
    };
    let ops = disk.stats().ops;
    disk.set_faults(FaultOptions { freeze_after_ops: Some(ops + cut_after), ..plan.faults });
    let acked = workload(seed, Rc::new(log), rng, plan.budget).await;
    (disk.power_cut(rng.next()), acked)
}

async fn round(seed: u64, ops_estimate: u64) -> u64 {
    let mut rng = Rng(seed);
    let mut plans = Vec::new();
    for budget in [60, 30] {
        let mut faults = FaultOptions { yield_probability: 0.3, ..FaultOptions::default() };
        if rng.below(4) == 0 {
            faults.write_eio_probability = 0.002;
            faults.fsync_eio_probability = 0.01;
        }
        let scale = ops_estimate * budget / 60;
        plans.push(Plan {
            faults,
            cut_after: Some(rng.below(scale + scale / 5) + 1),
            cut_in_open: (rng.below(8) == 0).then(|| rng.below(60) + 1),
            budget,
        });
    }
    let mut image = SimDisk::new(seed);
    let mut all = Acked::default();
    for (generation_number, plan) in plans.into_iter().enumerate() {
        let phase = format!("generation {generation_number}");
        let (next, acked) = generation(seed, image, &mut rng, plan, &all, &phase).await;
        image = next;
        all.synced.extend(acked.synced);
        all.appended_end = all.appended_end.max(acked.appended_end);
    }
    // The last crash image: recover it and check everything acknowledged in either generation.
    let last =
        Plan { faults: FaultOptions::default(), cut_after: None, cut_in_open: None, budget: 0 };
    generation(seed, image, &mut rng, last, &all, "final check").await;
    all.synced.len() as u64
}

/// Operations of an uninterrupted workload of 60 batches, so cuts land anywhere in one.
async fn estimate_ops() -> u64 {
    let disk = SimDisk::new(1);
    let mut rng = Rng(1);
    let config = config(&disk, &mut rng);
    let log = PartitionLog::open(Path::new(DIR), config).await.expect("open");
    let before = disk.stats().ops;
    workload(1, Rc::new(log), &mut rng, 60).await;
    disk.stats().ops - before
}

fn seeds() -> Vec<u64> {
    if let Ok(seed) = std::env::var("KAPPA_POWERCUT_SEED") {
        return vec![seed.parse().expect("KAPPA_POWERCUT_SEED is a number")];
    }
    let rounds: u64 = std::env::var("KAPPA_POWERCUT_ROUNDS")
        .map(|r| r.parse().expect("KAPPA_POWERCUT_ROUNDS is a number"))
        .unwrap_or(300);
    let first: u64 = std::env::var("KAPPA_POWERCUT_FIRST_SEED")
        .map(|r| r.parse().expect("KAPPA_POWERCUT_FIRST_SEED is a number"))
        .unwrap_or(1);
    (first..first + rounds).collect()
}

#[test]
fn synced_records_survive_power_cuts_and_nothing_corrupt_is_served() {
    let seeds = seeds();
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(1 << 20)
        .make()
        .expect("executor")
        .run(async move {
            let ops = estimate_ops().await;
            let mut synced = 0;
            for &seed in &seeds {
                let timeout = async {
                    glommio::timer::sleep(ROUND_TIMEOUT).await;
                    fail(seed, format!("hung for {ROUND_TIMEOUT:?}"))
                };
                synced += futures_lite::future::or(round(seed, ops), timeout).await;
            }
            eprintln!(
                "{} power-cut rounds ({ops} operations per workload): {synced} synced records \
                 checked; {:?}",
                seeds.len(),
                COVERAGE.with(|c| std::mem::take(&mut *c.borrow_mut()))
            );
            assert!(synced > seeds.len() as u64, "the rounds acknowledged almost nothing");
        });
}
