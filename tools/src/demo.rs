//! `kappa demo`: the main job on an embedded default, as far as the engine goes today.
//!
//! Writes a synthetic sensor stream (keyed readings with event times) into a data dir for a few
//! seconds, reads it back zero-copy and folds it into a small table (mean reading per sensor),
//! verifies every frame, and prints throughput and where the data lives. Shards, live views and
//! rebuilds join this demo as the engine grows.

// The demo reports wall-clock throughput; that is the point of it.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Context;
use kappa_storage::{paths, Durability, LogConfig, PartitionLog, Record, Seek};

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// How long to produce.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Data dir (created if missing; an existing log is reopened and appended to).
    #[arg(long, default_value = "kappa-demo-data")]
    pub data_dir: PathBuf,
    /// Partitions of the `sensors` topic (default: CPUs online).
    #[arg(long)]
    pub partitions: Option<u32>,
    #[arg(long, default_value = "written")]
    pub durability: Durability,
}

const SENSORS: u64 = 64;
const BATCH: usize = 500;
const EPOCH_MS: i64 = 1_700_000_000_000;

pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let partitions = args
        .partitions
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()) as u32)
        .max(1);
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data dir {}", args.data_dir.display()))?;
    let data_dir = std::fs::canonicalize(&args.data_dir)?;
    println!(
        "kappa demo: topic `sensors`, {partitions} partitions, durability {}, data in {}",
        args.durability,
        data_dir.display()
    );
    let seconds = args.seconds;
    let durability = args.durability;
    let dir = data_dir.clone();
    let handle = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name("kappa-demo")
        .preempt_timer(Duration::from_millis(1))
        .spawn(move || async move { demo(dir, partitions, seconds, durability).await })
        .map_err(|e| anyhow::anyhow!("starting the glommio executor (needs io_uring): {e}"))?;
    handle.join().map_err(|e| anyhow::anyhow!("executor failed: {e}"))??;

    let code = crate::verify::run(&data_dir, false)?;
    anyhow::ensure!(
        code == crate::cli::EXIT_OK,
        "verify found corruption in {}",
        data_dir.display()
    );
    println!(
        "inspect it with: cargo run --release -p kappa-tools -- inspect {}",
        data_dir.display()
    );
    Ok(())
}

async fn demo(
    dir: PathBuf,
    partitions: u32,
    seconds: u64,
    durability: Durability,
) -> anyhow::Result<()> {
    let mut logs = Vec::new();
    for p in 0..partitions {
        let path = paths::partition_dir(&dir, "sensors", p);
        let log = PartitionLog::open(&path, LogConfig::default())
            .await
            .with_context(|| format!("opening {}", path.display()))?;
        logs.push(Rc::new(log));
    }
    let start_offsets: Vec<u64> = logs.iter().map(|l| l.end_offset()).collect();

    // Produce: one task per partition, each owning the sensors that hash to it.
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (p, log) in logs.iter().enumerate() {
        let log = log.clone();
        tasks.push(glommio::spawn_local(async move {
            let mut values: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(64)).collect();
            let keys: Vec<Vec<u8>> =
                (0..SENSORS).map(|s| format!("sensor-{s:02}").into_bytes()).collect();
            let mut records_total = 0u64;
            let mut bytes_total = 0u64;
            let mut n = log.end_offset();
            while Instant::now() < deadline {
                let mut records = Vec::with_capacity(BATCH);
                for (i, value) in values.iter_mut().enumerate() {
                    let seq = n + i as u64;
                    let sensor = (seq * 7 + p as u64 * 13) % SENSORS;
                    let tenths = 150 + ((seq * 2_654_435_761) % 200) as i64 + sensor as i64;
                    value.clear();
                    use std::io::Write;
                    write!(
                        value,
                        "{{\"sensor\":{sensor},\"temp_c\":{}.{}}}",
                        tenths / 10,
                        tenths % 10
                    )?;
                    // Event time: 10 readings per ms, a little jitter so some arrive out of order.
                    let ts = EPOCH_MS + (seq / 10) as i64 - (seq % 3) as i64;
                    records.push((ts, sensor));
                }
                let batch: Vec<Record<'_>> = records
                    .iter()
                    .zip(&values)
                    .map(|((ts, sensor), v)| Record::new(*ts, Some(&keys[*sensor as usize][..]), v))
                    .collect();
                bytes_total += batch.iter().map(|r| r.size_bytes() as u64).sum::<u64>();
                log.append(&batch, durability).await?;
                records_total += BATCH as u64;
                n += BATCH as u64;
            }
            anyhow::Ok((records_total, bytes_total))
        }));
    }
    let mut records = 0u64;
    let mut bytes = 0u64;
    for task in tasks {
        let (r, b) = task.await?;
        records += r;
        bytes += b;
    }
    for log in &logs {
        log.sync().await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "produced {records} records ({:.1} MB) in {elapsed:.1} s: {:.0} records/s, {:.1} MB/s",
        bytes as f64 / 1e6,
        records as f64 / elapsed,
        bytes as f64 / 1e6 / elapsed
    );

    // Read back what this run wrote, zero-copy, and fold it into mean temperature per sensor.
    let started = Instant::now();
    let mut table: BTreeMap<Vec<u8>, (u64, i64)> = BTreeMap::new();
    let mut read = 0u64;
    for (log, from) in logs.iter().zip(&start_offsets) {
        let mut reader = log.reader(Seek::Offset(*from))?;
        while let Some(batch) = reader.next_batch().await? {
            for record in batch.records() {
                let tenths = parse_tenths(record.value()).context("demo record without temp_c")?;
                let key = record.key().unwrap_or(b"?");
                if let Some(entry) = table.get_mut(key) {
                    entry.0 += 1;
                    entry.1 += tenths;
                } else {
                    table.insert(key.to_vec(), (1, tenths));
                }
                read += 1;
            }
            glommio::yield_if_needed().await;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    anyhow::ensure!(read == records, "read back {read} records, wrote {records}");
    println!(
        "read back {read} records zero-copy in {elapsed:.2} s: {:.0} records/s",
        read as f64 / elapsed
    );
    println!("mean temperature per sensor (first 5 of {}):", table.len());
    for (key, (count, sum)) in table.iter().take(5) {
        println!(
            "  {:<10} {:>8} readings  {:>6.2} °C",
            String::from_utf8_lossy(key),
            count,
            *sum as f64 / 10.0 / *count as f64
        );
    }
    for log in &logs {
        log.close().await?;
    }
    Ok(())
}

/// The `temp_c` field of a demo record, in tenths of a degree (a tiny parser, not a JSON library:
/// the demo owns the format).
fn parse_tenths(value: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(value).ok()?;
    let field = text.split("\"temp_c\":").nth(1)?;
    let number = field.trim_end_matches('}');
    let (whole, frac) = number.split_once('.')?;
    Some(whole.parse::<i64>().ok()? * 10 + frac.parse::<i64>().ok()?)
}
