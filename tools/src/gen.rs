//! `kappa gen`: a deterministic synthetic log written through the storage API, for tests,
//! benchmarks and people trying the tools.

use std::rc::Rc;

use anyhow::Context;
use kappa_storage::{paths, LogConfig, PartitionLog, Record, MIB};

use crate::cli::GenArgs;

/// Event times start here (2023-11-14T22:13:20Z) and advance 1 ms per record: deterministic.
const EPOCH_MS: i64 = 1_700_000_000_000;

pub fn run(args: &GenArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.partitions > 0, "--partitions must be at least 1");
    anyhow::ensure!(args.batch > 0, "--batch must be at least 1");
    anyhow::ensure!(args.segment_mib > 0, "--segment-mib must be at least 1");
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating data dir {}", args.dir.display()))?;
    // One writer per data dir: refused (naming the holder's pid) while an engine runs on it.
    let _owner = kappa_engine::DirLock::acquire(&args.dir)?;
    let args = args.clone();
    let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name("kappa-gen")
        .spawn(move || async move { generate(args).await })
        .map_err(|e| anyhow::anyhow!("starting the glommio executor (needs io_uring): {e}"))?;
    executor.join().map_err(|e| anyhow::anyhow!("executor failed: {e}"))?
}

async fn generate(args: GenArgs) -> anyhow::Result<()> {
    let config =
        LogConfig { segment_size_bytes_max: args.segment_mib * MIB, ..LogConfig::default() };
    let args = Rc::new(args);
    let mut tasks = Vec::new();
    for partition in 0..args.partitions {
        let args = args.clone();
        let config = config.clone();
        tasks.push(glommio::spawn_local(async move {
            let dir = paths::partition_dir(&args.dir, &args.topic, partition);
            let log = PartitionLog::open(&dir, config)
                .await
                .with_context(|| format!("opening partition log {}", dir.display()))?;
            let mut rng =
                args.seed ^ (u64::from(partition) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let mut values = vec![0u8; args.value_size * args.batch];
            let mut keys = vec![[0u8; 8]; args.batch];
            let mut written = 0u64;
            while written < args.records {
                let n = (args.records - written).min(args.batch as u64) as usize;
                fill_random(&mut values[..n * args.value_size], &mut rng);
                for key in keys.iter_mut().take(n) {
                    *key = *b"sensor00";
                    let id = next(&mut rng) % 100;
                    key[6] = b'0' + (id / 10) as u8;
                    key[7] = b'0' + (id % 10) as u8;
                }
                let base = log.end_offset();
                let records: Vec<Record<'_>> = (0..n)
                    .map(|i| {
                        let value = &values[i * args.value_size..(i + 1) * args.value_size];
                        Record::new(EPOCH_MS + (base + i as u64) as i64, Some(&keys[i][..]), value)
                    })
                    .collect();
                // The append time is the wall clock (what age retention measures), not the
                // generated records' timestamps, which lie in the past.
                log.reserve().await;
                let now_ms = kappa_engine::Clock::now_ms(&kappa_engine::SystemClock);
                let ticket = log
                    .append_now(&records, Default::default(), args.durability, now_ms)
                    .with_context(|| format!("appending to {}", dir.display()))?;
                log.wait(ticket)
                    .await
                    .with_context(|| format!("appending to {}", dir.display()))?;
                written += n as u64;
            }
            log.close().await.with_context(|| format!("closing {}", dir.display()))?;
            println!(
                "{}/{}: {} records, end offset {}, {} bytes in {} segments",
                args.topic,
                partition,
                written,
                log.end_offset(),
                log.size_bytes(),
                log.segments().len()
            );
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await?;
    }
    Ok(())
}

fn next(state: &mut u64) -> u64 {
    // xorshift64*: deterministic and fast; quality is irrelevant here.
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

fn fill_random(bytes: &mut [u8], state: &mut u64) {
    for chunk in bytes.chunks_mut(8) {
        let v = next(state).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}
