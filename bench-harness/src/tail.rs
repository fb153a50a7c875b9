//! The `tail` scenario: append-to-tail latency against offered load, from 10% to 120% of the
//! measured maximum, so the knee of the curve is visible rather than one point of it.
//!
//! Client shape, the same for the maximum and for every point of the sweep: one engine with one
//! shard pinned to the last CPU, one partition, one producer thread and one tail consumer (the
//! calling thread) pinned to the other CPUs, 100-byte values with 8-byte keys, each record its own
//! `written` append (`send_batch_nowait`, acknowledgements not awaited), and a view (count per key
//! per second) maintained on the shard. The maximum is that client sending as fast as
//! backpressure lets it, measured as records/s arriving at the tail consumer.
//!
//! Each point is **open loop**: records are due on a fixed schedule, each carries its *intended*
//! send time, and latency is measured from that, not from when the producer got around to sending.
//! A stall delays every record behind it and all of them count (no coordinated omission).
//!
//! Every point measures the same number of records (`--seconds` worth at the maximum), so a point
//! at 10% runs ten times as long as one at 100%, and each includes segment rolls and view
//! checkpoints: a short pilot run sizes the topic's segments and the view's checkpoint interval
//! (both in records, as a deployment configures them) so one point's records fill about three of
//! each. The maximum is then measured on that same topic and view. Rolls and checkpoints are
//! counted per point, and each point starts after the view has caught up with the one before.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use kappa_engine::operator::{Aggregate, Window};
use kappa_engine::{
    Consumer, Durability, Engine, Producer, ProducerRecord, Seek, TopicConfig, ViewDef,
};
use kappa_storage::MIB;
use serde::{Deserialize, Serialize};

use crate::ingest::Percentiles;
use crate::report::{Figure, LatencyCurve, Outcome};
use crate::Machine;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: crate::Common,
    /// Every point measures the same number of records: this many seconds' worth at the measured
    /// maximum (so a point at 10% runs ten times as long), after a one-second warm-up.
    #[arg(long, default_value_t = 4.0)]
    seconds: f64,
    /// Offered loads as fractions of the measured maximum, comma separated.
    #[arg(long, value_delimiter = ',', default_values_t = [0.1, 0.25, 0.5, 0.7, 0.85, 1.0, 1.2])]
    loads: Vec<f64>,
    /// Takes this as the maximum (records/s) instead of measuring it, and sizes segments and
    /// checkpoints from it: two builds compared in alternating runs then meet the same offered
    /// loads and the same segment and checkpoint sizes (a measured maximum moves with the build
    /// and with the machine's load).
    #[arg(long)]
    max_records_s: Option<f64>,
}

const VALUE_BYTES: usize = 100;
const KEYS: u64 = 64;
const TARGET_P99_US: f64 = 1_000.0;
const TARGET_P999_US: f64 = 5_000.0;
/// The load the latency targets are judged at, as a fraction of the maximum.
const TARGET_LOAD: f64 = 0.5;
/// Segment rolls and view checkpoints per point: the records of one point fill this many
/// segments and checkpoint intervals.
const EVENTS_PER_POINT: f64 = 3.0;

/// One point of the latency-against-load curve (`results.json` `tail_load_curve`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadPoint {
    pub offered_fraction: f64,
    pub offered_records_per_s: f64,
    /// What the producer thread managed to send: below the offered rate when it fell behind.
    pub sent_records_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub samples: u64,
    /// How long the measured part of the point took to send (the same records at every point).
    pub measured_seconds: f64,
    pub segment_rolls: u64,
    pub view_checkpoints: u64,
    /// On the shard, from taking an append to its ack (the storage write path alone), p99.
    pub shard_ack_p99_us: f64,
    /// On the shard, from taking an append to handing its records to the tail consumer's channel
    /// (the write, the readable event, the subscription task's turn and its copy), p99. What the
    /// figure has beyond it is the producer's send and the request channel before the shard, and
    /// the consumer thread's wake-up after it.
    #[serde(default)]
    pub shard_tail_p99_us: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    scenario: &'static str,
    machine: Machine,
    shards: usize,
    shard_cpu: Option<usize>,
    client_cpus: Vec<usize>,
    producer_threads: usize,
    partitions: u32,
    value_bytes: usize,
    key_bytes: usize,
    durability: &'static str,
    max_records_s: f64,
    /// `--max-records-s`: the maximum was given, not measured (`max_measured_seconds` is then 0).
    max_given: bool,
    max_measured_seconds: f64,
    /// The short run that sized segments and checkpoints (same client, a topic of its own).
    pilot_records_s: f64,
    log_bytes_per_record: f64,
    segment_size_bytes_max: u64,
    view_checkpoint_every_records: u64,
    warm_up_seconds_per_point: f64,
    measured_records_per_point: u64,
    points: Vec<LoadPoint>,
    /// The highest offered fraction up to which every point's p99 met the target.
    p99_target_met_up_to_fraction: f64,
    notes: &'static str,
}

/// Pins the calling thread to one of `cpus` (the `index`-th, wrapping); no-op when there are none.
fn pin_to(cpus: &[usize], index: usize) {
    if !cpus.is_empty() {
        core_affinity::set_for_current(core_affinity::CoreId { id: cpus[index % cpus.len()] });
    }
}

pub fn scenario(args: Args) -> anyhow::Result<Outcome> {
    let quick = args.common.quick;
    let (seconds, warm_up, max_seconds, max_warm_up) =
        if quick { (0.25, 0.1, 0.5, 0.2) } else { (args.seconds, 1.0, 3.0, 1.0) };
    anyhow::ensure!(
        !args.loads.is_empty() && args.loads.iter().all(|l| *l > 0.0 && *l <= 2.0),
        "--loads must be fractions in (0, 2]"
    );
    anyhow::ensure!(seconds > 0.0, "--seconds must be positive");
    anyhow::ensure!(
        args.max_records_s.is_none_or(|m| m.is_finite() && m > 0.0),
        "--max-records-s must be positive"
    );
    let mut loads = args.loads.clone();
    loads.sort_by(f64::total_cmp);
    let temp = args.common.scratch("tail")?;
    let data_dir = temp.path().join("engine");
    let machine = Machine::probe(temp.path());

    // One shard on the last CPU; the client threads (producer, consumer) stay off it, as an
    // embedding program's threads would on a machine sized for it.
    let cpus: Vec<usize> =
        core_affinity::get_core_ids().unwrap_or_default().into_iter().map(|c| c.id).collect();
    let shard_cpu = cpus.last().copied();
    let client_cpus: Vec<usize> = cpus.iter().copied().filter(|c| Some(*c) != shard_cpu).collect();
    let mut builder = Engine::builder().data_dir(&data_dir).shards(1);
    if let Some(cpu) = shard_cpu {
        builder = builder.cpus(vec![cpu]);
    }
    let engine = builder.build()?;
    pin_to(&client_cpus, 0);

    // A short pilot on a topic of its own sizes the sweep topic's segments and checkpoints; then
    // the maximum is measured on the sweep topic itself, with those segments, that view and its
    // checkpoints, so the maximum and the sweep share everything but the schedule.
    let producer = engine.producer().with_durability(Durability::Written);
    engine.create_topic("pilot", TopicConfig::new(1))?;
    engine.create_view("pilot-view", view_def("pilot", u64::MAX))?;
    let mut consumer = engine.consumer("pilot", 0, Seek::End)?;
    let pilot = saturate(
        &producer,
        &mut consumer,
        "pilot",
        &client_cpus,
        max_warm_up / 2.0,
        max_seconds / 3.0,
    )
    .context("the pilot run")?;
    let pilot_offsets = engine.partition_offsets("pilot", 0)?;
    let bytes_per_record = pilot_offsets.size_bytes as f64 / pilot_offsets.end_offset.max(1) as f64;
    // A given maximum sizes segments and checkpoints too, so both builds of a pair get the same.
    let pilot_point_records = args.max_records_s.unwrap_or(pilot) * seconds;
    let segment_size_bytes_max =
        ((pilot_point_records * bytes_per_record / EVENTS_PER_POINT) as u64 / MIB).clamp(1, 256)
            * MIB;
    let checkpoint_every = ((pilot_point_records / EVENTS_PER_POINT) as u64).max(1000);
    let mut topic = TopicConfig::new(1);
    topic.segment_size_bytes_max = Some(segment_size_bytes_max);
    engine.create_topic("tail", topic)?;
    let view = engine.create_view("tail-view", view_def("tail", checkpoint_every))?;
    let mut consumer = engine.consumer("tail", 0, Seek::End)?;
    let max = match args.max_records_s {
        Some(given) => given,
        None => saturate(&producer, &mut consumer, "tail", &client_cpus, max_warm_up, max_seconds)
            .context("measuring the maximum rate")?,
    };
    let given = if args.max_records_s.is_some() { " (given, not measured)" } else { "" };
    eprintln!(
        "tail: maximum {max:.0} records/s{given} with one producer thread (pilot {pilot:.0}; {bytes_per_record:.0} log bytes per record, {} MiB segments, a checkpoint every {checkpoint_every} records)",
        segment_size_bytes_max / MIB
    );
    let point_records = ((max * seconds).ceil() as u64).max(1);
    let watcher = CheckpointWatcher::start(data_dir.join("views").join("tail-view"), &client_cpus);

    let mut points = Vec::new();
    let mut histograms = Vec::new();
    for &fraction in &loads {
        let rate = max * fraction;
        // Each point starts from a quiet shard: the view has folded everything before it.
        settle(&view)?;
        let (point, latency) = run_point(
            &engine,
            &producer,
            &mut consumer,
            &watcher,
            &client_cpus,
            (fraction, rate),
            warm_up,
            point_records,
        )
        .with_context(|| format!("offered load {:.0}%", fraction * 100.0))?;
        eprintln!(
            "  {:>4.0}% ({:>8.0} rec/s, sent {:>8.0}): p50 {:>8.0} us  p99 {:>9.0} us  p99.9 {:>9.0} us  max {:>9.0} us; {} rolls, {} checkpoints; shard p99: ack {:.0} us, tail {:.0} us",
            fraction * 100.0,
            rate,
            point.sent_records_per_s,
            point.p50_us,
            point.p99_us,
            point.p999_us,
            point.max_us,
            point.segment_rolls,
            point.view_checkpoints,
            point.shard_ack_p99_us,
            point.shard_tail_p99_us
        );
        histograms.push((fraction, latency));
        points.push(point);
    }
    watcher.stop();
    let shards = engine.shard_count();
    engine.shutdown()?;

    let met_up_to = points
        .iter()
        .take_while(|p| p.p99_us < TARGET_P99_US)
        .last()
        .map_or(0.0, |p| p.offered_fraction);
    let report = Report {
        scenario: "tail",
        machine,
        shards,
        shard_cpu,
        client_cpus,
        producer_threads: 1,
        partitions: 1,
        value_bytes: VALUE_BYTES,
        key_bytes: 8,
        durability: "written",
        max_records_s: max,
        max_given: args.max_records_s.is_some(),
        max_measured_seconds: if args.max_records_s.is_some() { 0.0 } else { max_seconds },
        pilot_records_s: pilot,
        log_bytes_per_record: bytes_per_record,
        segment_size_bytes_max,
        view_checkpoint_every_records: checkpoint_every,
        warm_up_seconds_per_point: warm_up,
        measured_records_per_point: point_records,
        points: points.clone(),
        p99_target_met_up_to_fraction: met_up_to,
        notes: "Latency is from each record's intended send time (open loop) to its arrival at the \
                tail consumer. The maximum is the same client sending without a schedule, measured \
                at the tail consumer. View checkpoints are counted by watching the view's directory \
                every 10 ms (each checkpoint file is named by its offset).",
    };
    let mut outcome = Outcome::new("tail", serde_json::to_value(&report)?);
    let f = &mut outcome.figures;
    f.push(Figure::one_run("tail", "maximum records/s (one producer thread)", max, "rec/s"));
    let at_target = points
        .iter()
        .min_by(|a, b| {
            (a.offered_fraction - TARGET_LOAD)
                .abs()
                .total_cmp(&(b.offered_fraction - TARGET_LOAD).abs())
        })
        .context("no load points")?;
    let load = format!("{:.0}% of max", at_target.offered_fraction * 100.0);
    let samples = at_target.samples;
    f.push(
        Figure::one_run("tail", &format!("append->tail p50 at {load}"), at_target.p50_us, "us")
            .statistic(format!("p50 of {samples} samples")),
    );
    f.push(
        Figure::one_run("tail", &format!("append->tail p99 at {load}"), at_target.p99_us, "us")
            .statistic(format!("p99 of {samples} samples"))
            .less_than(TARGET_P99_US),
    );
    f.push(
        Figure::one_run("tail", &format!("append->tail p99.9 at {load}"), at_target.p999_us, "us")
            .statistic(format!("p99.9 of {samples} samples"))
            .less_than(TARGET_P999_US),
    );
    f.push(
        Figure::one_run("tail", "p99 < 1 ms up to offered load", met_up_to * 100.0, "% of max")
            .statistic(format!("{} points", points.len())),
    );
    for (fraction, h) in &histograms {
        if [TARGET_LOAD, 1.0].iter().any(|t| (fraction - t).abs() < 1e-9)
            || Some(fraction) == loads.last()
        {
            outcome.latencies.push(LatencyCurve::of(
                format!("append->tail at {:.0}% of max", fraction * 100.0),
                h,
            ));
        }
    }
    outcome.load_curve = points;
    Ok(outcome)
}

/// Count per key per one-second window of append time.
fn view_def(topic: &str, checkpoint_every: u64) -> ViewDef {
    ViewDef::new(topic)
        .revision("count")
        .window(Window::Tumbling { size_ms: 1_000 })
        .aggregate(Aggregate::Count)
        .checkpoint_every(checkpoint_every)
}

/// A record of the tail client: key `i % KEYS`, the intended send time (ns since the point's
/// epoch) in the value's first 8 bytes.
fn record(i: u64, intended_ns: u64, value: &mut [u8]) -> ProducerRecord {
    value[..8].copy_from_slice(&intended_ns.to_le_bytes());
    ProducerRecord::new(value.to_vec()).key((i % KEYS).to_le_bytes().to_vec())
}

/// The client without a schedule: sends as fast as backpressure allows for `warm_up + seconds`;
/// records/s arriving at the tail consumer after the warm-up.
fn saturate(
    producer: &Producer,
    consumer: &mut Consumer,
    topic: &'static str,
    client_cpus: &[usize],
    warm_up: f64,
    seconds: f64,
) -> anyhow::Result<f64> {
    let sent = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(warm_up + seconds);
    let from = start + Duration::from_secs_f64(warm_up);
    let sender = {
        let (producer, sent, done, cpus) =
            (producer.clone(), sent.clone(), done.clone(), client_cpus.to_vec());
        std::thread::spawn(move || -> anyhow::Result<()> {
            pin_to(&cpus, 1);
            let mut value = vec![0u8; VALUE_BYTES];
            let mut i = 0u64;
            let result = loop {
                if Instant::now() >= end {
                    break Ok(());
                }
                if let Err(e) = producer.send_batch_nowait(topic, vec![record(i, 0, &mut value)]) {
                    break Err(e.into());
                }
                i += 1;
                sent.store(i, Ordering::Release);
            };
            done.store(true, Ordering::Release);
            result
        })
    };
    let mut received = 0u64;
    let mut in_window = 0u64;
    loop {
        if done.load(Ordering::Acquire) && received >= sent.load(Ordering::Acquire) {
            break;
        }
        let Some(batch) = consumer.next_batch_timeout(Duration::from_millis(100))? else {
            anyhow::ensure!(Instant::now() < end + Duration::from_secs(10), "the tail stalled");
            continue;
        };
        let now = Instant::now();
        let n = batch.records().count() as u64;
        received += n;
        if now >= from && now <= end {
            in_window += n;
        }
    }
    sender.join().map_err(|_| anyhow::anyhow!("the producer thread panicked"))??;
    Ok(in_window as f64 / seconds)
}

/// Waits until `view` has folded every record of its topic (at most a minute).
fn settle(view: &kappa_engine::ViewHandle) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let progress = view.progress()?;
        if progress.caught_up() && progress.lag() == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "the view is {} records behind after a minute",
            progress.lag()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One open-loop point: `rate` records/s due on a fixed schedule, a warm-up of `warm_up` seconds
/// then `records` measured records.
#[allow(clippy::too_many_arguments)]
fn run_point(
    engine: &Engine,
    producer: &Producer,
    consumer: &mut Consumer,
    watcher: &CheckpointWatcher,
    client_cpus: &[usize],
    (fraction, rate): (f64, f64),
    warm_up: f64,
    records: u64,
) -> anyhow::Result<(LoadPoint, hdrhistogram::Histogram<u64>)> {
    let before = engine.partition_offsets("tail", 0)?;
    let (ack_before, tail_before) = shard_latencies(engine)?;
    let interval_ns = 1e9 / rate;
    let warm_up_records = (warm_up * rate).ceil() as u64;
    let total = warm_up_records + records;
    let warm_up_ns = (warm_up_records as f64 * interval_ns) as u64;
    let epoch = Instant::now();

    let sender = {
        let (producer, cpus) = (producer.clone(), client_cpus.to_vec());
        std::thread::spawn(move || -> anyhow::Result<f64> {
            pin_to(&cpus, 1);
            let mut value = vec![0u8; VALUE_BYTES];
            let mut i = 0u64;
            while i < total {
                // Send every record whose intended time has come, each as its own append; then
                // sleep until the next one is due. Lateness of the sleep counts as latency.
                let now = epoch.elapsed().as_nanos() as u64;
                while i < total && ((i as f64 * interval_ns) as u64) <= now {
                    let intended = (i as f64 * interval_ns) as u64;
                    // Fire and forget: the tail consumer is the measurement.
                    drop(
                        producer
                            .send_batch_nowait("tail", vec![record(i, intended, &mut value)])?,
                    );
                    i += 1;
                }
                let next = (i as f64 * interval_ns) as u64;
                let now = epoch.elapsed().as_nanos() as u64;
                if i < total && next > now {
                    std::thread::sleep(Duration::from_nanos(next - now));
                }
            }
            Ok(total as f64 / epoch.elapsed().as_secs_f64())
        })
    };

    let mut latency = crate::new_histogram();
    let mut received = 0u64;
    while received < total {
        let batch = consumer
            .next_batch_timeout(Duration::from_secs(10))?
            .context("the tail stalled for 10 s")?;
        let now = epoch.elapsed().as_nanos() as u64;
        for record in batch.records() {
            let mut intended = [0u8; 8];
            intended.copy_from_slice(record.value().get(..8).context("short record")?);
            let intended = u64::from_le_bytes(intended);
            if intended >= warm_up_ns {
                latency.saturating_record(now.saturating_sub(intended));
            }
            received += 1;
        }
    }
    let sent_records_per_s =
        sender.join().map_err(|_| anyhow::anyhow!("the producer thread panicked"))??;
    let after = engine.partition_offsets("tail", 0)?;
    let (mut ack, mut tail) = shard_latencies(engine)?;
    ack.subtract(&ack_before).map_err(|e| anyhow::anyhow!("ack histogram: {e:?}"))?;
    tail.subtract(&tail_before).map_err(|e| anyhow::anyhow!("tail histogram: {e:?}"))?;
    let p = Percentiles::of_ns(&latency);
    let point = LoadPoint {
        offered_fraction: fraction,
        offered_records_per_s: rate,
        sent_records_per_s,
        p50_us: p.p50,
        p99_us: p.p99,
        p999_us: p.p999,
        max_us: p.max,
        samples: p.samples,
        measured_seconds: records as f64 / rate,
        segment_rolls: after.segment_count.saturating_sub(before.segment_count) as u64,
        view_checkpoints: watcher.between(before.end_offset, after.end_offset),
        shard_ack_p99_us: Percentiles::of_ns(&ack).p99,
        shard_tail_p99_us: Percentiles::of_ns(&tail).p99,
    };
    Ok((point, latency))
}

/// The shard's append-to-ack and append-to-tail-delivery histograms so far.
fn shard_latencies(
    engine: &Engine,
) -> anyhow::Result<(hdrhistogram::Histogram<u64>, hdrhistogram::Histogram<u64>)> {
    let (mut ack, mut tail) = (crate::new_histogram(), crate::new_histogram());
    for m in engine.metrics()? {
        ack.add(&m.append_ack_latency_ns)?;
        tail.add(&m.tail_delivery_latency_ns)?;
    }
    Ok((ack, tail))
}

/// Watches a view's directory for checkpoint files (named by the offset they cover) and remembers
/// every one it saw. The engine keeps the newest two, so a 10 ms poll misses none unless three
/// checkpoints land within 10 ms.
struct CheckpointWatcher {
    seen: Arc<Mutex<BTreeSet<u64>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CheckpointWatcher {
    fn start(dir: PathBuf, client_cpus: &[usize]) -> Self {
        let seen = Arc::new(Mutex::new(BTreeSet::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (seen, stop, cpus) = (seen.clone(), stop.clone(), client_cpus.to_vec());
            std::thread::spawn(move || {
                pin_to(&cpus, 2);
                while !stop.load(Ordering::Acquire) {
                    let mut found = Vec::new();
                    checkpoint_offsets(&dir, &mut found);
                    seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend(found);
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        CheckpointWatcher { seen, stop, thread: Some(thread) }
    }

    /// Checkpoints seen covering offsets in `(from, to]`.
    fn between(&self, from: u64, to: u64) -> u64 {
        // One more look, so a checkpoint written at the very end of a point is not missed.
        std::thread::sleep(Duration::from_millis(20));
        let seen = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        seen.range(from + 1..=to).count() as u64
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Offsets of the `*.ckpt` files under `dir` (any depth); files that vanish mid-walk are skipped.
fn checkpoint_offsets(dir: &Path, found: &mut Vec<u64>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            checkpoint_offsets(&path, found);
        } else if path.extension().and_then(|e| e.to_str()) == Some("ckpt") {
            if let Some(offset) =
                path.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse().ok())
            {
                found.push(offset);
            }
        }
    }
}
