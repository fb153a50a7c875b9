//! `kafka --history-only`: the read side alone, where a fetch of history stands against the log's
//! own scan, the embedded consumer and the raw read (the raw read first in each round; the other
//! three in an order that turns by one each round).

use super::*;

/// The log's own scan of `topic`/0 on its shard, from the beginning until `records` are read
/// (`kappa-bench storage`'s scan, on the engine's log): MB/s of key+value bytes, touching each
/// record's key and value as the consumers do.
fn engine_scan(engine: &Arc<Engine>, topic: &str, records: u64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let bytes = engine.run_on_partition(topic, 0, move |log| async move {
        let mut reader = log.reader(Seek::Beginning)?;
        let (mut read, mut bytes) = (0u64, 0u64);
        while read < records {
            let Some(batch) = reader.next_batch().await? else { break };
            for r in batch.records() {
                bytes += (r.key().map_or(0, <[u8]>::len) + r.value().len()) as u64;
                read += 1;
            }
            glommio::yield_if_needed().await;
        }
        Ok::<_, kappa_engine::storage::Error>((read, bytes))
    })??;
    anyhow::ensure!(bytes.0 >= records, "the scan stopped at {} of {records}", bytes.0);
    Ok(mb_s(bytes.1, started.elapsed()))
}

/// `--history-only`: see `Args::history_only`. Returns the rounds as JSON.
pub(super) fn history_only(
    engine: &Arc<Engine>,
    dir: &std::path::Path,
    addr: std::net::SocketAddr,
    size_mib: u64,
    pairs: usize,
    batches: u64,
) -> anyhow::Result<serde_json::Value> {
    let topic = "history";
    let records = batches * BATCH as u64;
    engine.create_topic(topic, TopicConfig::new(1))?;
    produce(addr, topic, 1, batches)?;
    engine.run_on_partition(topic, 0, |log| async move { log.sync().await })??;
    let read_shape = crate::limit::engine_read_shape();
    let names = ["scan", "consumer", "fetch"];
    let mut rows = Vec::new();
    let mut pairs_of: [Pairs; 5] = Default::default();
    for round in 0..pairs {
        let (_, raw_reads) = crate::limit::raw_runs_blocking(
            dir,
            size_mib * MIB,
            1,
            crate::limit::engine_write_shape(),
            Some(read_shape),
        )?;
        let raw = *raw_reads.first().context("no raw read")?;
        let mut rates = [0.0f64; 3];
        for k in 0..names.len() {
            let which = (k + round) % names.len();
            rates[which] = match which {
                0 => engine_scan(engine, topic, records)?,
                1 => embedded_read(engine, topic, records)?,
                _ => fetch_history(addr, topic, records)?,
            };
        }
        let [scan, consumer, fetch] = rates;
        eprintln!(
            "  round {}: raw read {} {raw:.0}, scan {scan:.0}, consumer {consumer:.0}, fetch \
             {fetch:.0} MB/s; fetch/scan {:.2}, consumer/scan {:.2}, fetch/raw {:.2} (load {})",
            round + 1,
            read_shape.label(),
            fetch / scan,
            consumer / scan,
            fetch / raw,
            std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
        );
        pairs_of[0].push(raw, scan);
        pairs_of[1].push(raw, consumer);
        pairs_of[2].push(raw, fetch);
        pairs_of[3].push(scan, fetch);
        pairs_of[4].push(scan, consumer);
        rows.push(serde_json::json!({
            "raw_read_mb_s": raw, "scan_mb_s": scan, "consumer_mb_s": consumer, "fetch_mb_s": fetch,
        }));
    }
    let [scan, consumer, fetch, fetch_vs_scan, consumer_vs_scan] = pairs_of.map(|p| p.summary());
    for (name, p) in [
        ("scan / raw read", &scan),
        ("consumer / raw read", &consumer),
        ("fetch / raw read", &fetch),
        ("fetch / scan", &fetch_vs_scan),
        ("consumer / scan", &consumer_vs_scan),
    ] {
        eprintln!(
            "  {name}: {:.2} [{:.2}-{:.2}] ({} pairs; {:.0} [{:.0}-{:.0}] against {:.0} \
             [{:.0}-{:.0}] MB/s)",
            p.ratio_median,
            p.ratio_min,
            p.ratio_max,
            p.pairs,
            p.engine.median,
            p.engine.min,
            p.engine.max,
            p.limit.median,
            p.limit.min,
            p.limit.max
        );
    }
    Ok(serde_json::json!({
        "scenario": "kafka", "history_only": rows, "read_shape": read_shape,
        "scan": scan, "consumer": consumer, "fetch": fetch,
        "fetch_vs_scan": fetch_vs_scan, "consumer_vs_scan": consumer_vs_scan,
    }))
}
