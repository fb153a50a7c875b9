//! The `scaling` and `mixed` scenarios: a rebuild spread over every shard as range tasks, and the
//! live tail's latency while it runs (issue 10).
//!
//! `scaling`: one partition's history (`--size-mib`, 100-byte JSON records, 10,000 keys) is
//! written once, then rebuilt by a new view from offset 0 with 1, 2, ... up to the CPUs online
//! shards (the data dir reopened each time: the partition's owner moves, its sealed segments are
//! read by every shard), `--pairs` times each, on the data dir and on a tmpfs dir (`/dev/shm`:
//! CPU-bound). The limit is the one-shard rate of the same run: the speed-up at N shards is
//! paired with it, round by round.
//!
//! `mixed`: a producer at a fixed rate (`--live-rate` records/s, `written` durability, batches
//! of 100) over one partition per shard, measuring each batch's append-to-ack latency, with a
//! tail consumer per partition; a phase without rebuild, then a rebuild of the realistic view
//! over the history, repeated; and the same rebuild with no live load. Live p50/p99/p99.9 with
//! and without the rebuild, against the budget; rebuild rate with and without live load. The
//! shards take the first CPUs, the client threads (producer, ack collector, consumers) and the
//! shards' blocking pools the others (`--clients apart`, the default). During each phase the
//! shards' one-second windows are sampled: the stages of the live latency (the request's wait
//! in the shard's channel, the shard's append to ack, what the producer's caller saw, tail
//! delivery) and the controller's level and duty cycle, so the JSON says where time goes.
//! Beside them, per phase, what each thread of the process waited for a CPU (the scheduler's
//! `/proc/self/task/*/schedstat`: time runnable but not running, per timeslice) and how late
//! the producer thread sent each batch: the stages no shard-side window sees.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kappa_engine::operator::{Aggregate, Window};
use kappa_engine::{
    BlockingPool, Durability, Engine, ProducerBatch, ReplayConfig, Seek, TopicConfig, ViewDef,
};
use kappa_storage::{LogConfig, MIB};
use serde::Serialize;

use crate::report::{Figure, Outcome, Series};
use crate::stats::Pairs;
use crate::{Machine, Spread};

#[derive(Debug, clap::Args)]
pub struct ScalingArgs {
    #[command(flatten)]
    pub common: crate::Common,
    /// History size in MiB (key + value bytes).
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Rebuilds per shard count.
    #[arg(long, default_value_t = 3)]
    pairs: usize,
    /// Also on a tmpfs data dir (CPU-bound), if /dev/shm exists.
    #[arg(long, default_value_t = true)]
    tmpfs: bool,
}

#[derive(Debug, clap::Args)]
pub struct MixedArgs {
    #[command(flatten)]
    pub common: crate::Common,
    /// History size in MiB (key + value bytes).
    #[arg(long, default_value_t = 2048)]
    size_mib: u64,
    /// The live producer's rate, records/s.
    #[arg(long, default_value_t = 50_000)]
    live_rate: u64,
    /// Rounds (each: live alone, live with a rebuild, a rebuild alone).
    #[arg(long, default_value_t = 3)]
    pairs: usize,
    /// Shards; default: one per CPU online less one left to the client threads (at least 1).
    #[arg(long)]
    shards: Option<usize>,
    /// Where the client threads run: `apart` (on CPUs no shard has, when there are any) or
    /// `anywhere` (where the scheduler puts them).
    #[arg(long, value_enum, default_value_t = Clients::Apart)]
    clients: Clients,
    /// The most of each 10 ms replay may be made to rest at the controller's floor
    /// (`ReplayConfig::duty_max_percent`); 0 turns the duty cycle off.
    #[arg(long)]
    duty_max_percent: Option<u32>,
    /// Move the duty by trials, keeping a pause only while it lowers the live p99
    /// (`ReplayConfig::duty_trials`); `false`: the duty rises on every tick over budget.
    #[arg(long, action = clap::ArgAction::Set, default_value_t = true)]
    duty_trials: bool,
    /// Replay hands glommio's reactor a turn while a live write waits
    /// (`ReplayConfig::io_turns`); `false` to measure what it buys.
    #[arg(long, action = clap::ArgAction::Set, default_value_t = true)]
    io_turns: bool,
    /// The scheduler slice each shard thread asks the kernel for, in us
    /// (`ReplayConfig::kernel_slice`); 0: the kernel's default.
    #[arg(long, default_value_t = 0)]
    kernel_slice_us: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Clients {
    Apart,
    Anywhere,
}

const KEYS: u64 = 10_000;

/// The realistic definition: a JSON field summed per JSON user key, per minute, with the
/// default checkpoints.
fn realistic(name: &str) -> ViewDef {
    ViewDef::new("history")
        .revision(name)
        .key_by_json("user")
        .map_json("amount")
        .window(Window::Tumbling { size_ms: 60_000 })
        .aggregate(Aggregate::Sum)
}

fn log_config() -> LogConfig {
    // Sealed segments are what range tasks read: 64 MiB keeps most of the history sealed.
    LogConfig { segment_size_bytes_max: 64 * MIB, ..LogConfig::default() }
}

fn engine(dir: &std::path::Path, shards: usize) -> anyhow::Result<Engine> {
    Ok(Engine::builder().data_dir(dir).shards(shards).log_config(log_config()).build()?)
}

fn record(i: u64, value: &mut Vec<u8>) -> [u8; 8] {
    value.clear();
    use std::io::Write;
    let _ = write!(
        value,
        r#"{{"user":"u{}","amount":{}.{:02},"pad":"xxxxxxxxxxxxxxxx"}}"#,
        i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % KEYS,
        i % 1000,
        i % 100
    );
    i.to_le_bytes()
}

/// Writes `records` records to "history".
fn write_history(engine: &Engine, records: u64) -> anyhow::Result<()> {
    let mut value = Vec::new();
    crate::replay::write_packed(engine, "history", records, 96, |i, batch| {
        let key = record(i, &mut value);
        batch.push(Some(&key), &value, Some(1_700_000_000_000 + i as i64));
    })
}

/// Builds a new view from offset 0 and times it until it has caught up with `records`.
fn rebuild_once(engine: &Engine, name: &str, records: u64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let view = engine.create_view(name, realistic(name))?;
    loop {
        std::thread::sleep(Duration::from_millis(20));
        let progress = view.progress()?;
        if progress.caught_up() && progress.consumed() >= records {
            break;
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(900), "rebuild took 15 minutes");
    }
    let seconds = started.elapsed().as_secs_f64();
    engine.delete_view(name)?;
    Ok(records as f64 / seconds)
}

#[derive(Debug, Serialize)]
struct ScalingKind {
    kind: &'static str,
    dir: std::path::PathBuf,
    /// Shard count -> records/s (median, min, max).
    records_per_s_by_shards: std::collections::BTreeMap<usize, Spread>,
    /// Shard count -> speed-up over one shard, paired per round.
    speedup_by_shards: std::collections::BTreeMap<usize, Spread>,
}

pub fn scaling(args: ScalingArgs) -> anyhow::Result<Outcome> {
    let quick = args.common.quick;
    let (size_mib, pairs) = if quick { (16, 1) } else { (args.size_mib, args.pairs.max(1)) };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let temp = args.common.scratch("scaling")?;
    let machine = Machine::probe(temp.path());
    let mut dirs = vec![("disk", temp.path().to_path_buf(), None)];
    let shm = std::path::Path::new("/dev/shm");
    let tmpfs = if args.tmpfs && shm.is_dir() {
        Some(tempfile::Builder::new().prefix("kappa-bench-scaling-").tempdir_in(shm)?)
    } else {
        None
    };
    if let Some(t) = &tmpfs {
        dirs.push(("tmpfs", t.path().to_path_buf(), None::<()>));
    }
    let records = size_mib * MIB / 96;
    let mut kinds = Vec::new();
    let mut outcome_figures = Vec::new();
    let mut scaling_series = Vec::new();
    for (kind, dir, _) in dirs {
        {
            let engine = engine(&dir, 1)?;
            engine.create_topic("history", TopicConfig::new(1))?;
            write_history(&engine, records)?;
            engine.shutdown()?;
        }
        let mut rates: std::collections::BTreeMap<usize, Vec<f64>> = Default::default();
        let mut round_base = Vec::new();
        for round in 0..pairs {
            for shards in 1..=cpus {
                let engine = engine(&dir, shards)?;
                let rate = rebuild_once(&engine, &format!("r{round}s{shards}"), records)?;
                engine.shutdown()?;
                eprintln!(
                    "  {kind}: {shards} shards, round {}: {:.2} M records/s",
                    round + 1,
                    rate / 1e6
                );
                if shards == 1 {
                    round_base.push(rate);
                }
                rates.entry(shards).or_default().push(rate);
            }
        }
        let mut by = std::collections::BTreeMap::new();
        let mut speedup = std::collections::BTreeMap::new();
        for (shards, r) in &rates {
            by.insert(*shards, Spread::of(r));
            let mut p = Pairs::default();
            for (base, rate) in round_base.iter().zip(r) {
                p.push(*base, *rate);
            }
            let s = p.summary();
            speedup.insert(
                *shards,
                Spread {
                    median: s.ratio_median,
                    min: s.ratio_min,
                    max: s.ratio_max,
                    runs: s.pairs,
                },
            );
            if *shards > 1 {
                let target = 0.8 * *shards as f64;
                outcome_figures.push(
                    Figure::median(
                        "scaling",
                        &format!("{kind}: speed-up at {shards} shards over one"),
                        &speedup[shards],
                        "x",
                    )
                    .at_least(target),
                );
            }
        }
        scaling_series.push(Series {
            name: format!("{kind} (median)"),
            x_label: "shards".into(),
            y_label: "M records/s".into(),
            points: by.iter().map(|(s, r)| (*s as f64, r.median / 1e6)).collect(),
        });
        kinds.push(ScalingKind {
            kind,
            dir,
            records_per_s_by_shards: by,
            speedup_by_shards: speedup,
        });
    }
    let json = serde_json::json!({
        "scenario": "scaling",
        "machine": machine,
        "records": records,
        "view": "JSON field `amount` summed per JSON key `user` (10,000 keys), 1-minute tumbling windows, default checkpoints",
        "records_per_s_by_shards": kinds.iter().map(|k| (k.kind, &k.records_per_s_by_shards)).collect::<std::collections::BTreeMap<_, _>>(),
        "kinds": kinds,
        "notes": "One partition; the data dir is reopened with N shards, the view rebuilt from offset 0 \
                  until caught up. Speed-up is paired per round with the one-shard rebuild of the \
                  same round; target 0.8 x N when CPU-bound (tmpfs). Other processes share the CPUs.",
    });
    let mut outcome = Outcome::new("scaling", json);
    outcome.figures = outcome_figures;
    outcome.scaling = scaling_series;
    Ok(outcome)
}

/// Latencies of one live phase.
#[derive(Debug, Clone, Serialize)]
struct LivePhase {
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    batches: u64,
}

/// The live producer, open loop: a batch of 100 records is sent at each intended time without
/// waiting for earlier ones (as a producer with requests in flight does), and a second thread
/// records each batch's latency from its intended send time to its last acknowledgement. A
/// closed loop (one send at a time) would measure its own backlog instead: one slow round trip
/// would delay every later send. Sends in flight are bounded (`IN_FLIGHT`); past it the sender
/// waits, and the wait counts in the latency, so coordinated omission stays out either way.
fn live_load(
    engine: &Engine,
    rate: u64,
    stop: &AtomicBool,
    partitions: u32,
    client_cpus: &[usize],
) -> anyhow::Result<(hdrhistogram::Histogram<u64>, hdrhistogram::Histogram<u64>)> {
    pin_to(client_cpus, 0);
    // How late each batch left the producer thread (its sleep's overshoot and the thread's wait
    // for a CPU): a stage of the latency that no shard-side window sees.
    let mut late = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    const IN_FLIGHT: usize = 64;
    let producer = engine.producer().with_durability(Durability::Written);
    let per_batch = 100u64;
    let interval = Duration::from_secs_f64(per_batch as f64 / rate as f64);
    let (sent, acked) =
        std::sync::mpsc::sync_channel::<(Instant, Vec<kappa_engine::PendingAck>)>(IN_FLIGHT);
    std::thread::scope(|s| {
        let collector = std::thread::Builder::new().name("live-ack".into()).spawn_scoped(
            s,
            move || -> anyhow::Result<hdrhistogram::Histogram<u64>> {
                pin_to(client_cpus, 1);
                let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
                for (due, acks) in acked {
                    for ack in acks {
                        ack.wait()?;
                    }
                    h.saturating_record(due.elapsed().as_micros() as u64);
                }
                Ok(h)
            },
        )?;
        // A tail consumer per partition: the shards measure tail delivery for them.
        let consumers = (0..partitions)
            .map(|partition| {
                let mut consumer = engine.consumer("live", partition, Seek::End)?;
                let name = format!("live-tail-{partition}");
                Ok(std::thread::Builder::new().name(name).spawn_scoped(
                    s,
                    move || -> anyhow::Result<()> {
                        pin_to(client_cpus, 2 + partition as usize);
                        while !stop.load(Ordering::Relaxed) {
                            consumer.next_batch_timeout(Duration::from_millis(100))?;
                        }
                        Ok(())
                    },
                )?)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let started = Instant::now();
        let mut value = Vec::new();
        let mut i = 0u64;
        let sending = (|| -> anyhow::Result<()> {
            while !stop.load(Ordering::Relaxed) {
                let due = started + interval * (i / per_batch) as u32;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                late.saturating_record(
                    Instant::now().saturating_duration_since(due).as_micros() as u64
                );
                let mut batch =
                    ProducerBatch::with_capacity(per_batch as usize, per_batch as usize * 96);
                for j in i..i + per_batch {
                    let key = record(j, &mut value);
                    batch.push(Some(&key), &value, None);
                }
                let _ = partitions;
                let acks = producer.send_packed_nowait("live", batch)?;
                sent.send((due, acks)).map_err(|_| anyhow::anyhow!("the collector stopped"))?;
                i += per_batch;
            }
            Ok(())
        })();
        drop(sent);
        let h = collector.join().map_err(|_| anyhow::anyhow!("collector panicked"))??;
        for c in consumers {
            c.join().map_err(|_| anyhow::anyhow!("consumer panicked"))??;
        }
        sending?;
        Ok((h, late))
    })
}

/// One thread's scheduler counters (`/proc/self/task/TID/schedstat`): ns on a CPU, ns runnable
/// waiting for one, timeslices.
type SchedCounters = [u64; 3];

/// Every thread of this process now: tid -> (name, counters).
fn sched_snapshot() -> std::collections::BTreeMap<u64, (String, SchedCounters)> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return out };
    for task in tasks.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse::<u64>().ok()) else {
            continue;
        };
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(task.path().join("comm")),
            std::fs::read_to_string(task.path().join("schedstat")),
        ) else {
            continue;
        };
        let mut f = stat.split_whitespace().map(|v| v.parse::<u64>().unwrap_or(0));
        let counters = [f.next().unwrap_or(0), f.next().unwrap_or(0), f.next().unwrap_or(0)];
        out.insert(tid, (comm.trim().to_string(), counters));
    }
    out
}

/// What a group of threads did over a phase: time on a CPU, time runnable waiting for one (both
/// as a share of the phase), timeslices, and the mean wait per timeslice (how long a wake-up
/// waited for a CPU, on average).
#[derive(Debug, Clone, Copy, Default, Serialize)]
struct SchedUse {
    run_share: f64,
    wait_share: f64,
    slices: u64,
    wait_per_slice_us: f64,
}

/// The threads' use of the CPUs between two snapshots `seconds` apart, grouped by name (the
/// io_uring workers, `iou-wrk-TID`, as one group; threads that ended in between are missing).
fn sched_use(
    before: &std::collections::BTreeMap<u64, (String, SchedCounters)>,
    after: &std::collections::BTreeMap<u64, (String, SchedCounters)>,
    seconds: f64,
) -> std::collections::BTreeMap<String, SchedUse> {
    let mut groups: std::collections::BTreeMap<String, [u64; 3]> = Default::default();
    for (tid, (name, now)) in after {
        let then = before.get(tid).map_or([0; 3], |(_, c)| *c);
        let group = if name.starts_with("iou-wrk") { "iou-wrk".to_string() } else { name.clone() };
        let g = groups.entry(group).or_default();
        for (g, (now, then)) in g.iter_mut().zip(now.iter().zip(then)) {
            *g += now.saturating_sub(then);
        }
    }
    let ns = seconds.max(1e-9) * 1e9;
    groups
        .into_iter()
        .filter(|(_, [run, _, _])| *run > 0)
        .map(|(name, [run, wait, slices])| {
            let use_ = SchedUse {
                run_share: run as f64 / ns,
                wait_share: wait as f64 / ns,
                slices,
                wait_per_slice_us: if slices == 0 {
                    0.0
                } else {
                    wait as f64 / slices as f64 / 1e3
                },
            };
            (name, use_)
        })
        .collect()
}

/// A compact line of the groups that matter to the live latency.
fn sched_line(groups: &std::collections::BTreeMap<String, SchedUse>) -> String {
    groups
        .iter()
        .filter(|(name, _)| {
            name.starts_with("kappa-shard") || name.starts_with("live-") || *name == "iou-wrk"
        })
        .map(|(name, u)| {
            format!(
                "{name} run {:.0}% wait {:.0}% ({:.0} us/slice)",
                u.run_share * 100.0,
                u.wait_share * 100.0,
                u.wait_per_slice_us
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Pins the calling thread to one of `cpus` (the `index`-th, wrapping); no-op when there are none.
fn pin_to(cpus: &[usize], index: usize) {
    if !cpus.is_empty() {
        core_affinity::set_for_current(core_affinity::CoreId { id: cpus[index % cpus.len()] });
    }
}

/// One look at a shard's live-latency controller (its one-second windows, p99s in us): the
/// stages of the live latency and what the controller made of them.
#[derive(Debug, Clone, Copy, Default, Serialize)]
struct StageSample {
    /// An append request's wait in the shard's channel before its request loop took it.
    queue: f64,
    /// The shard taking an append to its acknowledgement (write and completion included).
    append: f64,
    /// A producer's send to its caller holding the acknowledgement: the above, plus the ack's
    /// way back and the client thread's wake-up.
    client: f64,
    /// The shard taking an append to a tail consumer being handed its records.
    tail: f64,
    level: f64,
    duty_percent: f64,
    paused_fraction: f64,
}

impl StageSample {
    fn fields(&self) -> [f64; 7] {
        [
            self.queue,
            self.append,
            self.client,
            self.tail,
            self.level,
            self.duty_percent,
            self.paused_fraction,
        ]
    }
    fn from_fields(f: [f64; 7]) -> StageSample {
        let [queue, append, client, tail, level, duty_percent, paused_fraction] = f;
        StageSample { queue, append, client, tail, level, duty_percent, paused_fraction }
    }
}

/// Every shard's controller, every 250 ms, until `stop`.
fn sample_stages(engine: &Engine, stop: &AtomicBool) -> anyhow::Result<Vec<StageSample>> {
    let mut out = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(250));
        for m in engine.metrics()? {
            let r = m.replay;
            out.push(StageSample {
                queue: r.queue_p99_us as f64,
                append: r.append_p99_us as f64,
                client: r.client_p99_us as f64,
                tail: r.tail_p99_us as f64,
                level: r.level,
                duty_percent: r.duty_percent as f64,
                paused_fraction: r.paused_fraction,
            });
        }
    }
    Ok(out)
}

/// The median and the max of each field over a phase's samples.
#[derive(Debug, Clone, Copy, Default, Serialize)]
struct Stages {
    samples: usize,
    median: StageSample,
    max: StageSample,
}

fn stages(samples: &[StageSample]) -> Stages {
    let mut median = [0.0; 7];
    let mut max = [0.0; 7];
    for i in 0..7 {
        let mut v: Vec<f64> = samples.iter().map(|s| s.fields()[i]).collect();
        v.sort_by(f64::total_cmp);
        median[i] = v.get(v.len() / 2).copied().unwrap_or(0.0);
        max[i] = v.last().copied().unwrap_or(0.0);
    }
    Stages {
        samples: samples.len(),
        median: StageSample::from_fields(median),
        max: StageSample::from_fields(max),
    }
}

fn phase(h: &hdrhistogram::Histogram<u64>) -> LivePhase {
    LivePhase {
        p50_us: h.value_at_quantile(0.5) as f64,
        p99_us: h.value_at_quantile(0.99) as f64,
        p999_us: h.value_at_quantile(0.999) as f64,
        batches: h.len(),
    }
}

pub fn mixed(args: MixedArgs) -> anyhow::Result<Outcome> {
    let quick = args.common.quick;
    let (size_mib, pairs) = if quick { (16, 1) } else { (args.size_mib, args.pairs.max(1)) };
    let mut online: Vec<usize> =
        core_affinity::get_core_ids().unwrap_or_default().into_iter().map(|c| c.id).collect();
    online.sort_unstable();
    let cpus = online.len().max(1);
    let shards = args.shards.unwrap_or(cpus.saturating_sub(1).max(1));
    let temp = args.common.scratch("mixed")?;
    let machine = Machine::probe(temp.path());
    let records = size_mib * MIB / 96;
    // Shards on the first CPUs online; the others (when there are any) to the client threads
    // and the shards' blocking pools, so nothing else waits for a CPU behind a busy shard.
    let shard_cpus: Vec<usize> = online.iter().copied().take(shards).collect();
    let client_cpus: Vec<usize> = match args.clients {
        Clients::Apart => online.iter().copied().filter(|c| !shard_cpus.contains(c)).collect(),
        Clients::Anywhere => Vec::new(),
    };
    let replay = ReplayConfig {
        duty_max_percent: args.duty_max_percent.unwrap_or(ReplayConfig::default().duty_max_percent),
        duty_trials: args.duty_trials,
        io_turns: args.io_turns,
        kernel_slice: (args.kernel_slice_us > 0)
            .then(|| Duration::from_micros(args.kernel_slice_us)),
        ..ReplayConfig::default()
    };
    let mut builder = Engine::builder()
        .data_dir(temp.path())
        .shards(shards)
        .log_config(log_config())
        .replay(replay)
        .blocking_pool(match args.clients {
            Clients::Apart => BlockingPool::OtherCpus,
            Clients::Anywhere => BlockingPool::Unbound,
        });
    if !shard_cpus.is_empty() {
        builder = builder.cpus(shard_cpus.clone());
    }
    let engine = builder.build()?;
    let budget = engine.config().live_latency_budget;
    engine.create_topic("history", TopicConfig::new(1))?;
    engine.create_topic("live", TopicConfig::new(shards as u32))?;
    write_history(&engine, records)?;
    let phase_s = if quick { 2.0 } else { 10.0 };
    let mut without = Vec::new();
    let mut with = Vec::new();
    let mut rate_with = Vec::new();
    let mut rate_alone = Vec::new();
    let mut samples_without = Vec::new();
    let mut samples_with = Vec::new();
    let mut sched_without = Vec::new();
    let mut sched_with = Vec::new();
    let mut late_without = Vec::new();
    let mut late_with = Vec::new();
    for round in 0..pairs {
        // Live alone. (The phase lines place a shard's `KAPPA_OVERRUN_TRACE_US` lines.)
        eprintln!("  round {}: live alone", round + 1);
        let stop = AtomicBool::new(false);
        let looked = AtomicBool::new(false);
        let (h, late) = std::thread::scope(|s| -> anyhow::Result<_> {
            let live =
                std::thread::Builder::new().name("live-send".into()).spawn_scoped(s, || {
                    live_load(&engine, args.live_rate, &stop, shards as u32, &client_cpus)
                })?;
            let sampler = s.spawn(|| sample_stages(&engine, &looked));
            let before = sched_snapshot();
            let started = Instant::now();
            std::thread::sleep(Duration::from_secs_f64(phase_s));
            sched_without.push(sched_use(
                &before,
                &sched_snapshot(),
                started.elapsed().as_secs_f64(),
            ));
            looked.store(true, Ordering::Relaxed);
            stop.store(true, Ordering::Relaxed);
            samples_without
                .extend(sampler.join().map_err(|_| anyhow::anyhow!("sampler panicked"))??);
            live.join().map_err(|_| anyhow::anyhow!("live thread panicked"))?
        })?;
        without.push(phase(&h));
        late_without.push(late.value_at_quantile(0.99) as f64);
        // Live with a rebuild.
        eprintln!("  round {}: live with a rebuild", round + 1);
        let stop = AtomicBool::new(false);
        let looked = AtomicBool::new(false);
        let ((h, late), rate) = std::thread::scope(|s| -> anyhow::Result<_> {
            let live =
                std::thread::Builder::new().name("live-send".into()).spawn_scoped(s, || {
                    live_load(&engine, args.live_rate, &stop, shards as u32, &client_cpus)
                })?;
            let sampler = s.spawn(|| sample_stages(&engine, &looked));
            let before = sched_snapshot();
            let started = Instant::now();
            let rate = rebuild_once(&engine, &format!("with{round}"), records);
            sched_with.push(sched_use(&before, &sched_snapshot(), started.elapsed().as_secs_f64()));
            looked.store(true, Ordering::Relaxed);
            stop.store(true, Ordering::Relaxed);
            samples_with.extend(sampler.join().map_err(|_| anyhow::anyhow!("sampler panicked"))??);
            let h = live.join().map_err(|_| anyhow::anyhow!("live thread panicked"))??;
            Ok((h, rate?))
        })?;
        with.push(phase(&h));
        late_with.push(late.value_at_quantile(0.99) as f64);
        rate_with.push(rate);
        // The rebuild alone.
        eprintln!("  round {}: the rebuild alone", round + 1);
        rate_alone.push(rebuild_once(&engine, &format!("alone{round}"), records)?);
        eprintln!(
            "  round {}: live p99 {:.0} us without, {:.0} us with the rebuild (budget {} us); rebuild {:.2} M/s with, {:.2} M/s alone",
            round + 1,
            without.last().map_or(0.0, |p| p.p99_us),
            with.last().map_or(0.0, |p| p.p99_us),
            budget.as_micros(),
            rate / 1e6,
            rate_alone.last().copied().unwrap_or(0.0) / 1e6,
        );
        eprintln!(
            "    send late p99 {:.0} / {:.0} us; without: {}\n    with: {}",
            late_without.last().copied().unwrap_or(0.0),
            late_with.last().copied().unwrap_or(0.0),
            sched_without.last().map(sched_line).unwrap_or_default(),
            sched_with.last().map(sched_line).unwrap_or_default(),
        );
    }
    let metrics = engine.metrics()?;
    engine.shutdown()?;
    let spread = |v: &[LivePhase], f: fn(&LivePhase) -> f64| {
        Spread::of(&v.iter().map(f).collect::<Vec<_>>())
    };
    let p99_without = spread(&without, |p| p.p99_us);
    let p99_with = spread(&with, |p| p.p99_us);
    let p999_with = spread(&with, |p| p.p999_us);
    let alone = Spread::of(&rate_alone);
    let with_rate = Spread::of(&rate_with);
    let mut json = serde_json::json!({
        "scenario": "mixed",
        "machine": machine,
        "shards": shards,
        "records": records,
        "live_rate": args.live_rate,
        "clients": args.clients,
        "shard_cpus": shard_cpus,
        "client_cpus": client_cpus,
        "duty_max_percent": replay.duty_max_percent,
        "duty_trials": replay.duty_trials,
        "stages_us_without": stages(&samples_without),
        "stages_us_with": stages(&samples_with),
        "live_p50_us_without": spread(&without, |p| p.p50_us).median,
        "live_p99_us_without": p99_without.median,
        "live_p999_us_without": spread(&without, |p| p.p999_us).median,
        "live_p50_us_with": spread(&with, |p| p.p50_us).median,
        "live_p99_us_with": p99_with.median,
        "live_p999_us_with": p999_with.median,
        "budget_us": budget.as_micros() as u64,
        "rebuild_records_per_s_alone": alone.median,
        "rebuild_records_per_s_with": with_rate.median,
        "without": without,
        "with": with,
        "rebuild_alone": alone,
        "rebuild_with": with_rate,
        "replay_controller": metrics.iter().map(|m| serde_json::json!({
            "shard": m.shard, "level": m.replay.level, "budget_burn": m.replay.budget_burn(),
            "tasks_done": m.replay.tasks_done, "records": m.replay.records,
            "duty_percent": m.replay.duty_percent, "paused_ms": m.replay.paused_ms,
            "duty_trials": m.replay.duty_trials,
            "duty_trials_helped": m.replay.duty_trials_helped,
            "io_turns": m.replay.io_turns,
        })).collect::<Vec<_>>(),
        "notes": "Live: one producer thread, batches of 100 records at `written` durability, \
                  latency from each batch's intended send time to its ack (no coordinated \
                  omission); a tail consumer per partition. `stages_us_*`: each shard's \
                  one-second windows sampled every 250 ms during the phases (median and max over \
                  the samples): `queue` the request's wait in the shard's channel, `append` the \
                  shard taking the append to its ack, `client` the producer's send to its caller \
                  holding the ack (what the controller judges, with `append` and `tail`), `tail` \
                  the shard taking an append to a tail consumer being handed it; `level`, \
                  `duty_percent` and `paused_fraction` are the controller's. `sched_*`: per \
                  round, each thread group's time on a CPU and runnable waiting for one (shares \
                  of the phase) and the mean wait per timeslice; `send_late_*`: how late the \
                  producer thread sent its batches (p99). Clients `apart`: the \
                  client threads and blocking pools run on `client_cpus`, the shards on \
                  `shard_cpus`. The realistic view: JSON field per JSON key (10,000), 1-minute windows, \
                  default checkpoints. Medians over rounds; other processes share the CPUs.",
    });
    // Beside the macro above (its recursion limit): where else the live latency went.
    json["io_turns"] = replay.io_turns.into();
    json["kernel_slice_us"] = args.kernel_slice_us.into();
    json["send_late_p99_us_without"] = serde_json::to_value(Spread::of(&late_without))?;
    json["send_late_p99_us_with"] = serde_json::to_value(Spread::of(&late_with))?;
    json["sched_without"] = serde_json::to_value(&sched_without)?;
    json["sched_with"] = serde_json::to_value(&sched_with)?;
    let mut outcome = Outcome::new("mixed", json);
    let budget_us = budget.as_micros() as f64;
    outcome.figures.push(Figure::median("mixed", "live p99 without rebuild", &p99_without, "us"));
    outcome.figures.push(
        Figure::median("mixed", "live p99 during the rebuild", &p99_with, "us")
            .less_than(budget_us.min(1.5 * p99_without.median)),
    );
    outcome.figures.push(Figure::median(
        "mixed",
        "live p99.9 during the rebuild",
        &p999_with,
        "us",
    ));
    outcome.figures.push(Figure::median("mixed", "rebuild records/s alone", &alone, "rec/s"));
    outcome.figures.push(
        Figure::median("mixed", "rebuild records/s with live load", &with_rate, "rec/s")
            .at_least(0.7 * alone.median),
    );
    Ok(outcome)
}
