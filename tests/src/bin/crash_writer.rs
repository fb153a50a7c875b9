//! Child process of the crash test: appends with `synced` durability from several tasks and prints
//! one line per acknowledged batch, until it is killed.
//!
//! Usage: `kappa-crash-writer DIR ROUND`.

use std::io::Write;
use std::rc::Rc;

use kappa_storage::{Durability, PartitionLog, Record};
use kappa_tests::crash::{batch_len, log_config, value, Ack};

const PRODUCERS: u32 = 4;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir =
        std::path::PathBuf::from(args.next().ok_or_else(|| anyhow::anyhow!("usage: DIR ROUND"))?);
    let round: u32 = args.next().ok_or_else(|| anyhow::anyhow!("usage: DIR ROUND"))?.parse()?;
    let handle = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(4 << 20)
        .spawn(move || async move { write_until_killed(dir, round).await })
        .map_err(|e| anyhow::anyhow!("executor: {e}"))?;
    handle.join().map_err(|e| anyhow::anyhow!("executor: {e}"))?
}

async fn write_until_killed(dir: std::path::PathBuf, round: u32) -> anyhow::Result<()> {
    let log = Rc::new(PartitionLog::open(&dir, log_config()).await?);
    println!("ready {}", log.end_offset());
    std::io::stdout().flush()?;
    let mut tasks = Vec::new();
    for producer in 0..PRODUCERS {
        let log = log.clone();
        tasks.push(glommio::spawn_local(async move {
            for batch in 0u64.. {
                let count = batch_len(producer, batch);
                let values: Vec<Vec<u8>> =
                    (0..count).map(|i| value(round, producer, batch, i)).collect();
                let records: Vec<Record<'_>> = values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| Record::new(i as i64, None, v))
                    .collect();
                let info = log.append(&records, Durability::Synced).await?;
                let ack = Ack { base_offset: info.base_offset, count, round, producer, batch };
                let mut out = std::io::stdout().lock();
                writeln!(out, "{}", ack.line())?;
                out.flush()?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await?;
    }
    Ok(())
}
