//! The `partitions` scenario: what many partitions cost, and ingest with keys spread over them.
//!
//! (a) Random keys against pre-grouped records: N records of 100 B with random keys over P
//! partitions, in batches of 1000 mixed-key records built before the clock starts, sent through
//! the accumulator (`Producer::with_linger`, `submit_each`, then `Producer::flush` at the end of
//! the load), paired with the same records grouped by partition by hand (one batch per partition,
//! `send_packed_nowait`), which is the best the engine does with these records. Both sides run on
//! one engine, alternating (the side that runs first turns every pair), timed from the first
//! send to the last acknowledgement (`written`); the figure is the median of the per-pair ratios.
//! Targets: at least 0.8 at 1,000 partitions,
//! 0.7 at 4,000. Each side prepares its records before its clock starts: the random side builds
//! its mixed batches, the grouped side groups the records by hand (routing each key, one batch per
//! partition, sized up front as the random side's batches are). The report also gives the ratio
//! with each side's preparation on its clock (`ratio_with_preparation`; the grouping by hand took
//! one thread about as long as the whole grouped send here, 200-440 ms per million records) and
//! why the random side's stored batches were appended (`random_flushes`).
//!
//! (b) Costs for 1, 100, 1,000 and 10,000 partitions, each phase in a fresh child process
//! (`kappa-bench partitions-cost`): one creates the topic (the open time) and writes 10 records of
//! 100 B to each partition; then fresh processes reopen the dir (the reopen time, RSS and open
//! file descriptors after it, and the write buffers glommio placed outside the registered DMA
//! pool). RSS per partition is (RSS after the reopen - RSS of a fresh process that reopened a data
//! dir with one partition written, the baseline) / (P - 1): an engine's first partition touches
//! its shards' registered DMA pools (about 130 MiB that does not grow with partitions), which an
//! engine with no topics never does, so a baseline without it charged the pools to the first
//! partitions (1,335 KiB per partition at 100). Targets: at most 64 KiB per idle partition after reopen; 10,000
//! partitions within 2 GiB of RSS and reopened in under 5 s.

use std::time::{Duration, Instant};

use kappa_engine::{Durability, Engine, EngineConfig, PendingAck, PendingAcks, ProducerBatch};
use kappa_engine::{TopicConfig, DEFAULT_BATCH_SIZE};
use serde::Serialize;

use crate::report::{Figure, Outcome};
use crate::stats::Pairs;
use crate::{Machine, Spread};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: crate::Common,
    /// Records per run of (a).
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    /// Paired runs per partition count of (a).
    #[arg(long, default_value_t = 5)]
    pairs: usize,
    /// The accumulator's linger on the random-key side, in ms.
    #[arg(long, default_value_t = 100)]
    linger_ms: u64,
    /// The accumulator's batch size on the random-key side, in KiB (default: the producer's).
    #[arg(long)]
    batch_size_kib: Option<usize>,
    /// Run only part (a), random keys against pre-grouped.
    #[arg(long, conflicts_with = "only_costs")]
    only_ratios: bool,
    /// Run only part (b), the costs per partition.
    #[arg(long)]
    only_costs: bool,
    /// Partition counts of part (a) (default 1,000 and 4,000; with `--quick` 100 and 400).
    #[arg(long, value_delimiter = ',')]
    counts: Vec<u32>,
    /// For profiling: run only this side of part (a), `--pairs` times, and report no ratio.
    #[arg(long, value_parser = ["random", "grouped"])]
    profile_side: Option<String>,
}

const VALUE: usize = 100;
const BATCH: u64 = 1000;

#[derive(Debug, Serialize)]
struct RatioRun {
    partitions: u32,
    grouped_records_s: Vec<f64>,
    random_records_s: Vec<f64>,
    ratios: Vec<f64>,
    ratio: Spread,
    /// Per pair, the random side's building of its batches plus its send against the grouping
    /// by hand plus the grouped send (`random_building_ms`, `grouping_by_hand_ms`): what a user
    /// who starts from records gets either way. The ratio leaves both out.
    ratio_with_preparation: Spread,
    /// Stored batches the random side's last run appended, and records per stored batch.
    random_stored_batches: u64,
    random_records_per_batch: f64,
    /// Why the random side's last run appended its stored batches (`FlushCounts`).
    random_flushes: Flushes,
    /// What grouping the records by hand took one thread, per pair, in ms: the pre-grouped
    /// side's clock starts after it.
    grouping_by_hand_ms: Vec<f64>,
    /// What building the random side's batches took one thread, per pair, in ms: its clock
    /// starts after it.
    random_building_ms: Vec<f64>,
    target: f64,
}

#[derive(Debug, Serialize)]
struct Cost {
    partitions: u32,
    /// `create_topic`: every partition created and opened.
    open_s: f64,
    /// `build()` over the data dir until every partition is open, in fresh processes.
    reopen_s: Spread,
    /// RSS of a fresh process after reopening a data dir with one partition written (the
    /// baseline: its shards' registered DMA pools are touched).
    rss_baseline_mib: f64,
    rss_after_reopen_mib: Spread,
    /// (RSS after the reopen - the baseline's median) / (P - 1); none for one partition.
    rss_per_partition_kib: Option<Spread>,
    open_fds: usize,
    open_fds_baseline: usize,
    fd_soft_limit: u64,
    /// Write buffers glommio placed outside the registered DMA pool (create and reopens).
    io_memory_misses: u64,
}

#[derive(Debug, Serialize)]
struct Report {
    scenario: &'static str,
    machine: Machine,
    shards: usize,
    records: u64,
    value_bytes: usize,
    batch_records: u64,
    linger_ms: u64,
    batch_size: usize,
    ratios: Vec<RatioRun>,
    costs: Vec<Cost>,
    notes: &'static str,
}

/// A deterministic pseudo-random key per record (xorshift64*).
fn key(i: u64) -> [u8; 8] {
    let mut x = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes()
}

fn engine(dir: &std::path::Path) -> anyhow::Result<Engine> {
    let mut config = EngineConfig::new(dir);
    // Preallocation reserves real blocks per active segment (8 MiB by default): 10,000
    // partitions would reserve 80 GB for a few MiB of records each. A partition here receives
    // about 100 KiB, so 256 KiB ahead is enough to keep appends from extending the file.
    config.log.preallocate_bytes = 256 * 1024;
    Engine::builder()
        .config(config)
        .build()
        .map_err(|e| anyhow::anyhow!("starting the engine: {e}"))
}

/// Records/s of the random-key side: batches of 1000 mixed keys through the accumulator; and the
/// seconds building the batches took (one thread, before the clock starts).
fn random_run(
    engine: &Engine,
    topic: &str,
    records: u64,
    linger: Duration,
    batch_size: usize,
) -> anyhow::Result<(f64, f64)> {
    let producer = engine
        .producer()
        .with_durability(Durability::Written)
        .with_linger(linger)
        .with_batch_size(batch_size);
    let value = vec![b'v'; VALUE];
    // The records are in batches before the clock starts, as the grouped side's are.
    let building = Instant::now();
    let mut batches = Vec::with_capacity(records.div_ceil(BATCH) as usize);
    let mut i = 0;
    while i < records {
        let n = BATCH.min(records - i);
        let mut batch = ProducerBatch::with_capacity(n as usize, n as usize * (VALUE + 8));
        for r in i..i + n {
            batch.push(Some(&key(r)), &value, None);
        }
        batches.push(batch);
        i += n;
    }
    let building_s = building.elapsed().as_secs_f64();
    crate::perfctl::profiling(true);
    let started = Instant::now();
    let mut pending: Vec<PendingAcks> = Vec::with_capacity(batches.len());
    for batch in batches {
        pending.push(producer.submit_each(topic, batch)?);
    }
    // The end of the load: what still lingers is appended now (Kafka's `flush()`).
    let submitted = started.elapsed();
    let phases = std::env::var_os("KAPPA_BENCH_PHASES").is_some();
    if phases {
        // Served after every request queued before it: the end of staging.
        engine.metrics()?;
    }
    let staged = started.elapsed();
    producer.flush()?;
    let flushed = started.elapsed();
    for p in pending {
        p.wait()?;
    }
    let elapsed = started.elapsed();
    crate::perfctl::profiling(false);
    if phases {
        eprintln!(
            "partitions: random phases: submitted {:.0} ms, staged {:.0} ms, flushed {:.0} ms, \
             acknowledged {:.0} ms",
            submitted.as_secs_f64() * 1e3,
            staged.as_secs_f64() * 1e3,
            flushed.as_secs_f64() * 1e3,
            elapsed.as_secs_f64() * 1e3
        );
    }
    Ok((records as f64 / elapsed.as_secs_f64(), building_s))
}

/// Records/s of the same records grouped by partition by hand: one batch per partition; and the
/// seconds the grouping took (one thread, before the clock starts: the baseline leaves it out).
fn grouped_run(
    engine: &Engine,
    topic: &str,
    partitions: u32,
    records: u64,
) -> anyhow::Result<(f64, f64)> {
    let producer = engine.producer().with_durability(Durability::Written);
    let value = vec![b'v'; VALUE];
    let grouping = Instant::now();
    // Sized up front (the expected share of each partition and a margin), as the random side's
    // batches are: growing by doubling charged the grouping for reallocations the other side
    // does not make.
    let per = (records.div_ceil(u64::from(partitions)) * 5 / 4 + 16) as usize;
    let mut groups: Vec<ProducerBatch> =
        (0..partitions).map(|_| ProducerBatch::with_capacity(per, per * (VALUE + 8))).collect();
    for r in 0..records {
        let k = key(r);
        let p = kappa_engine::router::partition_for_key(&k, partitions);
        groups[p as usize].push(Some(&k), &value, None);
    }
    let grouping_s = grouping.elapsed().as_secs_f64();
    crate::perfctl::profiling(true);
    let started = Instant::now();
    let mut pending: Vec<PendingAck> = Vec::new();
    for batch in groups.into_iter().filter(|b| !b.is_empty()) {
        pending.extend(producer.send_packed_nowait(topic, batch)?);
    }
    for p in pending {
        p.wait()?;
    }
    let elapsed = started.elapsed();
    crate::perfctl::profiling(false);
    Ok((records as f64 / elapsed.as_secs_f64(), grouping_s))
}

/// CPU seconds so far: (shard threads' user, shard threads' system, the whole process), from
/// `/proc` (clock ticks of 10 ms): where a side's time goes on a machine shared with other work.
fn cpu_seconds() -> (f64, f64, f64) {
    let ticks = |stat: &str| -> Option<(String, f64, f64)> {
        let (head, rest) = stat.rsplit_once(')')?;
        let comm = head.split_once('(')?.1.to_string();
        let fields: Vec<&str> = rest.split_whitespace().collect();
        Some((comm, fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?))
    };
    let (mut user, mut sys) = (0.0, 0.0);
    for task in std::fs::read_dir("/proc/self/task").into_iter().flatten().flatten() {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        if let Some((comm, u, s)) = ticks(&stat) {
            if comm.starts_with("kappa-shard") {
                user += u;
                sys += s;
            }
        }
    }
    let own = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let total = ticks(&own).map_or(0.0, |(_, u, s)| u + s);
    (user / 100.0, sys / 100.0, total / 100.0)
}

fn cpu_since(before: (f64, f64, f64)) -> String {
    let now = cpu_seconds();
    format!(
        "cpu: shards user {:.2} s sys {:.2} s, process {:.2} s",
        now.0 - before.0,
        now.1 - before.1,
        now.2 - before.2
    )
}

fn stored_batches(engine: &Engine) -> anyhow::Result<(u64, u64)> {
    let m = engine.metrics()?;
    Ok((m.iter().map(|m| m.batches_appended).sum(), m.iter().map(|m| m.records_appended).sum()))
}

/// Why the accumulator appended its staged batches, summed over shards (`FlushCounts`).
#[derive(Debug, Default, Clone, Copy, Serialize)]
struct Flushes {
    full: u64,
    linger: u64,
    request: u64,
    memory: u64,
    idle: u64,
}

impl Flushes {
    fn now(engine: &Engine) -> anyhow::Result<Flushes> {
        let mut f = Flushes::default();
        for m in engine.metrics()? {
            let c = m.stage_flushes;
            f.full += c.full;
            f.linger += c.linger;
            f.request += c.request;
            f.memory += c.memory;
            f.idle += c.idle;
        }
        Ok(f)
    }

    fn since(self, before: Flushes) -> Flushes {
        Flushes {
            full: self.full - before.full,
            linger: self.linger - before.linger,
            request: self.request - before.request,
            memory: self.memory - before.memory,
            idle: self.idle - before.idle,
        }
    }
}

fn ratio_runs(
    args: &Args,
    partitions: u32,
    records: u64,
    pairs: usize,
    target: f64,
) -> anyhow::Result<RatioRun> {
    let scratch = args.common.scratch("partitions")?;
    let engine = engine(scratch.path())?;
    engine.create_topic("grouped", TopicConfig::new(partitions))?;
    engine.create_topic("random", TopicConfig::new(partitions))?;
    let linger = Duration::from_millis(args.linger_ms);
    let batch_size = args.batch_size_kib.map_or(DEFAULT_BATCH_SIZE, |k| k * 1024);
    let (mut grouped, mut random, mut grouping) = (Vec::new(), Vec::new(), Vec::new());
    let mut building = Vec::new();
    let mut last = (0, 0);
    let mut flushes = Flushes::default();
    if let Some(side) = &args.profile_side {
        for run in 0..pairs {
            let cpu = cpu_seconds();
            let rate = match side.as_str() {
                "random" => random_run(&engine, "random", records, linger, batch_size)?.0,
                _ => grouped_run(&engine, "grouped", partitions, records)?.0,
            };
            eprintln!(
                "partitions: {partitions} partitions, {side} only, run {}: {rate:.0} rec/s; {}",
                run + 1,
                cpu_since(cpu)
            );
        }
        engine.shutdown()?;
        anyhow::bail!("--profile-side measures one side only: no ratio");
    }
    for pair in 0..pairs {
        let grouped_side = || -> anyhow::Result<_> {
            let cpu = cpu_seconds();
            let (g, grouping_s) = grouped_run(&engine, "grouped", partitions, records)?;
            Ok((g, grouping_s, cpu_since(cpu)))
        };
        let random_side = || -> anyhow::Result<_> {
            let before = stored_batches(&engine)?;
            let flushes_before = Flushes::now(&engine)?;
            let cpu = cpu_seconds();
            let (r, building_s) = random_run(&engine, "random", records, linger, batch_size)?;
            let random_cpu = cpu_since(cpu);
            let after = stored_batches(&engine)?;
            let flushes = Flushes::now(&engine)?.since(flushes_before);
            Ok((r, building_s, random_cpu, (after.0 - before.0, after.1 - before.1), flushes))
        };
        // The side that runs first turns every pair: a side that always ran second would
        // always meet what the first left behind (dirty pages, a fuller log, a warmer cache).
        let ((g, grouping_s, grouped_cpu), (r, building_s, random_cpu, appended, pair_flushes)) =
            if pair % 2 == 0 {
                let grouped = grouped_side()?;
                (grouped, random_side()?)
            } else {
                let random = random_side()?;
                (grouped_side()?, random)
            };
        flushes = pair_flushes;
        eprintln!(
            "partitions: grouped {grouped_cpu} (grouping by hand before its clock: {:.0} ms); \
             random {random_cpu} (building its batches before its clock: {:.0} ms); random \
             flushes {flushes:?}",
            grouping_s * 1e3,
            building_s * 1e3
        );
        last = appended;
        eprintln!(
            "partitions: {partitions} partitions, pair {}: grouped {g:.0} rec/s, random keys \
             {r:.0} rec/s, ratio {:.2} ({} stored batches, {:.0} records each); with each \
             side's preparation on its clock: {:.2}",
            pair + 1,
            r / g,
            last.0,
            last.1 as f64 / last.0.max(1) as f64,
            with_preparation(records, r, building_s * 1e3, g, grouping_s * 1e3)
        );
        grouped.push(g);
        random.push(r);
        grouping.push(grouping_s * 1e3);
        building.push(building_s * 1e3);
    }
    engine.shutdown()?;
    let ratios: Vec<f64> = random.iter().zip(&grouped).map(|(r, g)| r / g).collect();
    let with_prep: Vec<f64> = (0..random.len())
        .map(|i| with_preparation(records, random[i], building[i], grouped[i], grouping[i]))
        .collect();
    Ok(RatioRun {
        partitions,
        ratio: Spread::of(&ratios),
        ratio_with_preparation: Spread::of(&with_prep),
        ratios,
        grouped_records_s: grouped,
        random_records_s: random,
        random_stored_batches: last.0,
        random_records_per_batch: last.1 as f64 / last.0.max(1) as f64,
        random_flushes: flushes,
        grouping_by_hand_ms: grouping,
        random_building_ms: building,
        target,
    })
}

/// The random side against the grouped side with each side's preparation on its clock: building
/// the mixed batches (`building_ms`) then sending them at `random` records/s, against grouping by
/// hand (`grouping_ms`) then sending at `grouped` records/s.
fn with_preparation(
    records: u64,
    random: f64,
    building_ms: f64,
    grouped: f64,
    grouping_ms: f64,
) -> f64 {
    let n = records as f64;
    (n / grouped + grouping_ms / 1e3) / (n / random + building_ms / 1e3)
}

/// This process's resident set in bytes (`VmRSS`).
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|r| r.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

fn fd_soft_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// What one child process of the cost part measured (one JSON line on its stdout).
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Measured {
    /// `create`: the `create_topic` call; `reopen`: `build()` until every partition is open.
    seconds: f64,
    rss_bytes: u64,
    fds: usize,
    io_memory_misses: u64,
}

/// The child process of the cost part: `create` makes the topic (when `partitions` > 0) and
/// writes 10 records of 100 B to each partition; `reopen` opens the dir again, checks every
/// partition's end offset, and measures. Each runs in a fresh process, so the RSS it reports is
/// not inflated by what an earlier engine left in the allocator.
pub fn cost_child(dir: &std::path::Path, partitions: u32, phase: &str) -> anyhow::Result<()> {
    let measured = match phase {
        "create" => {
            let engine = engine(dir)?;
            let started = Instant::now();
            if partitions > 0 {
                engine.create_topic("t", TopicConfig::new(partitions))?;
            }
            let seconds = started.elapsed().as_secs_f64();
            let producer = engine.producer();
            let value = vec![b'v'; VALUE];
            let mut pending = Vec::new();
            // Unkeyed batches go round-robin: P of them put 10 records in every partition
            // (the reopen checks that).
            for _ in 0..partitions {
                let mut batch = ProducerBatch::new();
                for _ in 0..10 {
                    batch.push(None, &value, None);
                }
                pending.extend(producer.send_packed_nowait("t", batch)?);
            }
            for p in pending {
                p.wait()?;
            }
            let measured = Measured {
                seconds,
                rss_bytes: rss_bytes(),
                fds: open_fds(),
                io_memory_misses: misses(&engine)?,
            };
            engine.shutdown()?;
            measured
        }
        "reopen" => {
            let started = Instant::now();
            let engine = engine(dir)?;
            let seconds = started.elapsed().as_secs_f64();
            if partitions > 0 {
                let offsets = engine.topic_offsets("t")?;
                anyhow::ensure!(
                    offsets.len() == partitions as usize
                        && offsets.iter().all(|o| o.end_offset == 10),
                    "records lost across the reopen"
                );
            }
            let measured = Measured {
                seconds,
                rss_bytes: rss_bytes(),
                fds: open_fds(),
                io_memory_misses: misses(&engine)?,
            };
            engine.shutdown()?;
            measured
        }
        other => anyhow::bail!("unknown phase {other:?}: expected create or reopen"),
    };
    println!("{}", serde_json::to_string(&measured)?);
    Ok(())
}

fn misses(engine: &Engine) -> anyhow::Result<u64> {
    Ok(engine.metrics()?.iter().map(|m| m.buffer_pool.io_memory_misses).sum())
}

/// Runs one phase of the cost part in a child process of this binary.
fn measure(dir: &std::path::Path, partitions: u32, phase: &str) -> anyhow::Result<Measured> {
    let exe = std::env::current_exe()?;
    let output = std::process::Command::new(exe)
        .arg("partitions-cost")
        .arg(dir)
        .arg(partitions.to_string())
        .arg(phase)
        .stderr(std::process::Stdio::inherit())
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "the {phase} child for {partitions} partitions failed: {}",
        output.status
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line)
        .map_err(|e| anyhow::anyhow!("the {phase} child's report {line:?}: {e}"))
}

/// The baseline: an engine over a data dir with one partition written, created and reopened the
/// same way (see the module doc: what the first partition costs is not per partition).
fn baseline(args: &Args, reopens: usize) -> anyhow::Result<Vec<Measured>> {
    let scratch = args.common.scratch("partitions-baseline")?;
    measure(scratch.path(), 1, "create")?;
    (0..reopens).map(|_| measure(scratch.path(), 1, "reopen")).collect()
}

fn cost(
    args: &Args,
    partitions: u32,
    reopens: usize,
    baseline: &[Measured],
) -> anyhow::Result<Cost> {
    let scratch = args.common.scratch("partitions-cost")?;
    let created = measure(scratch.path(), partitions, "create")?;
    let reopened: Vec<Measured> = (0..reopens)
        .map(|_| measure(scratch.path(), partitions, "reopen"))
        .collect::<Result<_, _>>()?;
    let rss_base = Spread::of(&baseline.iter().map(|m| m.rss_bytes as f64).collect::<Vec<_>>());
    let rss = Spread::of(&reopened.iter().map(|m| m.rss_bytes as f64).collect::<Vec<_>>());
    let per_partition: Vec<f64> = reopened
        .iter()
        .map(|m| (m.rss_bytes as f64 - rss_base.median) / 1024.0 / f64::from(partitions - 1))
        .collect();
    let cost = Cost {
        partitions,
        open_s: created.seconds,
        reopen_s: Spread::of(&reopened.iter().map(|m| m.seconds).collect::<Vec<_>>()),
        rss_baseline_mib: rss_base.median / MIB,
        rss_after_reopen_mib: Spread {
            median: rss.median / MIB,
            min: rss.min / MIB,
            max: rss.max / MIB,
            runs: rss.runs,
        },
        rss_per_partition_kib: (partitions > 1).then(|| Spread::of(&per_partition)),
        open_fds: reopened.iter().map(|m| m.fds).max().unwrap_or(0),
        open_fds_baseline: baseline.iter().map(|m| m.fds).max().unwrap_or(0),
        fd_soft_limit: fd_soft_limit(),
        io_memory_misses: created.io_memory_misses
            + reopened.iter().map(|m| m.io_memory_misses).sum::<u64>(),
    };
    eprintln!(
        "partitions: {partitions} partitions: open {:.2} s, reopen {:.2} s (median of {}), RSS {:.0} \
         MiB ({} per further partition over an engine with one, {:.0} MiB), {} fds ({} with \
         one partition), {} DMA pool misses",
        cost.open_s,
        cost.reopen_s.median,
        reopens,
        cost.rss_after_reopen_mib.median,
        cost.rss_per_partition_kib.as_ref().map_or("-".into(), |s| format!("{:.1} KiB", s.median)),
        cost.rss_baseline_mib,
        cost.open_fds,
        cost.open_fds_baseline,
        cost.io_memory_misses
    );
    Ok(cost)
}

const MIB: f64 = (1u64 << 20) as f64;

pub fn scenario(args: Args) -> anyhow::Result<Outcome> {
    let quick = args.common.quick;
    let data_dir = args.common.data_dir.clone().unwrap_or_else(|| ".".into());
    let machine = Machine::probe(&data_dir);
    let (records, pairs) = if quick { (20_000, 2) } else { (args.records, args.pairs.max(1)) };
    let default_counts: &[(u32, f64)] =
        if quick { &[(100, 0.8), (400, 0.7)] } else { &[(1000, 0.8), (4000, 0.7)] };
    // A count of its own gets the target of the nearest default count below it.
    let chosen: Vec<(u32, f64)> = args
        .counts
        .iter()
        .map(|&c| {
            (c, if c >= default_counts[1].0 { default_counts[1].1 } else { default_counts[0].1 })
        })
        .collect();
    let ratio_counts = if chosen.is_empty() { default_counts } else { &chosen[..] };
    let cost_counts: &[u32] = if quick { &[1, 100] } else { &[1, 100, 1000, 10_000] };
    let mut ratios = Vec::new();
    for &(partitions, target) in if args.only_costs { &[][..] } else { ratio_counts } {
        ratios.push(ratio_runs(&args, partitions, records, pairs, target)?);
    }
    let reopens = if quick { 1 } else { 3 };
    let cost_counts = if args.only_ratios { &[][..] } else { cost_counts };
    let base = if cost_counts.is_empty() { Vec::new() } else { baseline(&args, reopens)? };
    let mut costs = Vec::new();
    for &partitions in cost_counts {
        costs.push(cost(&args, partitions, reopens, &base)?);
    }
    let shards = std::thread::available_parallelism().map_or(1, |n| n.get());
    let report = Report {
        scenario: "partitions",
        machine,
        shards,
        records,
        value_bytes: VALUE,
        batch_records: BATCH,
        linger_ms: args.linger_ms,
        batch_size: args.batch_size_kib.map_or(DEFAULT_BATCH_SIZE, |k| k * 1024),
        ratios,
        costs,
        notes: "(a) random keys in batches of 1000 through the accumulator, paired with the same \
                records grouped by partition by hand, one engine, alternating (the side that \
                runs first turns every pair), `written`; each \
                side's clock starts after it prepared its records (built the mixed batches, or \
                grouped them by hand), `ratio_with_preparation` includes that; (b) per \
                count, a child process creates the topic and writes 10 records per partition, then \
                fresh child processes reopen it; RSS per partition = (RSS after the reopen - RSS \
                of a fresh process that reopened a data dir with one partition written) / (P - 1).",
    };
    let mut outcome = Outcome::new("partitions", serde_json::to_value(&report)?);
    for run in &report.ratios {
        let mut p = Pairs::default();
        for (g, r) in run.grouped_records_s.iter().zip(&run.random_records_s) {
            p.push(*g, *r);
        }
        outcome.figures.push(Figure::paired(
            "partitions",
            &format!("random keys over {} partitions, records/s", run.partitions),
            "rec/s",
            "pre-grouped by partition",
            &p.summary(),
            run.target,
        ));
    }
    for c in &report.costs {
        let name = |what: &str| format!("{what}, {} partitions", c.partitions);
        outcome.figures.push(Figure::one_run(
            "partitions",
            &name("open (create_topic)"),
            c.open_s,
            "s",
        ));
        let mut reopen = Figure::median("partitions", &name("reopen"), &c.reopen_s, "s");
        if c.partitions == 10_000 {
            reopen = reopen.less_than(5.0);
        }
        outcome.figures.push(reopen);
        let mut rss =
            Figure::median("partitions", &name("RSS after reopen"), &c.rss_after_reopen_mib, "MiB");
        if c.partitions == 10_000 {
            rss = rss.less_than(2048.0);
        }
        outcome.figures.push(rss);
        if let Some(per_partition) = &c.rss_per_partition_kib {
            let mut per = Figure::median(
                "partitions",
                &name("RSS per idle partition after reopen, over an engine with one"),
                per_partition,
                "KiB",
            );
            if c.partitions >= 100 {
                per = per.less_than(64.0);
            }
            outcome.figures.push(per);
        }
        outcome.figures.push(Figure::one_run(
            "partitions",
            &name("open file descriptors"),
            c.open_fds as f64,
            "fds",
        ));
        outcome.figures.push(Figure::one_run(
            "partitions",
            &name("write buffers outside the registered DMA pool"),
            c.io_memory_misses as f64,
            "buffers",
        ));
    }
    Ok(outcome)
}
