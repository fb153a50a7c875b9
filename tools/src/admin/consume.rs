//! `kappa consume TOPIC`: prints records, one per line, from every partition (or one).
//!
//! One thread per partition long-polls the server (`wait_ms`), so new records appear as soon as
//! they are written; without `--count` it follows forever. Where it starts: the end (new records
//! only) by default, `--from-beginning`, `--offset N` (every partition), or `--since TIME` (an
//! RFC 3339 time, epoch milliseconds, or a duration ago such as `10m`).

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use base64::Engine as _;
use serde_json::Value;

use super::{Client, Conn};

#[derive(Debug, Clone, clap::Args)]
pub struct ConsumeArgs {
    pub topic: String,
    /// Only this partition.
    #[arg(long)]
    pub partition: Option<u32>,
    #[arg(long, conflicts_with_all = ["offset", "since"])]
    pub from_beginning: bool,
    #[arg(long, conflicts_with = "since")]
    pub offset: Option<u64>,
    /// RFC 3339 time, epoch ms, or a duration ago (`10m`, `1h30m`).
    #[arg(long)]
    pub since: Option<String>,
    /// Stop after this many records (otherwise follow forever).
    #[arg(long)]
    pub count: Option<u64>,
    /// Print the key before the value.
    #[arg(long)]
    pub print_key: bool,
    /// Between key and value with --print-key.
    #[arg(long, default_value = "\t")]
    pub key_sep: String,
    #[command(flatten)]
    pub conn: Conn,
}

/// Parses `--since`.
pub fn since_ms(text: &str, now_ms: i64) -> anyhow::Result<i64> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    if let Ok(t) = humantime::parse_rfc3339_weak(text) {
        let ms = t.duration_since(std::time::UNIX_EPOCH).context("a time before 1970")?.as_millis();
        return Ok(ms as i64);
    }
    let ago = humantime::parse_duration(text).with_context(|| {
        format!("--since {text:?}: expected an RFC 3339 time, epoch ms or a duration like 10m")
    })?;
    Ok(now_ms - ago.as_millis() as i64)
}

fn value_bytes(record: &Value, text: &str, b64: &str) -> Option<Vec<u8>> {
    if let Some(s) = record[text].as_str() {
        return Some(s.as_bytes().to_vec());
    }
    record[b64].as_str().and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
}

pub fn run(args: ConsumeArgs) -> anyhow::Result<()> {
    let client = Arc::new(Client::new(&args.conn));
    let topic = client.get(&format!("/v1/topics/{}", args.topic))?;
    let partitions =
        topic["partitions"].as_u64().context("the topic has no partition count")? as u32;
    let chosen: Vec<u32> = match args.partition {
        Some(p) if p >= partitions => {
            anyhow::bail!("topic {} has {partitions} partitions", args.topic)
        }
        Some(p) => vec![p],
        None => (0..partitions).collect(),
    };
    #[allow(clippy::disallowed_methods)] // `--since 10m` is relative to the wall clock.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let start: (&str, String) = if args.from_beginning {
        ("from", "beginning".into())
    } else if let Some(o) = args.offset {
        ("offset", o.to_string())
    } else if let Some(s) = &args.since {
        ("timestamp", since_ms(s, now_ms)?.to_string())
    } else {
        ("from", "end".into())
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::sync_channel::<anyhow::Result<(u32, Value)>>(4);
    for partition in chosen {
        let (client, tx, stop, start, topic) =
            (client.clone(), tx.clone(), stop.clone(), start.clone(), args.topic.clone());
        std::thread::spawn(move || {
            let path = format!("/v1/topics/{topic}/partitions/{partition}/records");
            let mut position = start;
            while !stop.load(Ordering::Relaxed) {
                let query =
                    [position.clone(), ("wait_ms", "1000".into()), ("max_records", "1000".into())];
                let answer = client.get_query(&path, &query);
                let failed = answer.is_err();
                let next = answer.as_ref().ok().and_then(|a| a["next_offset"].as_u64());
                if tx.send(answer.map(|a| (partition, a))).is_err() || failed {
                    return;
                }
                if let Some(next) = next {
                    position = ("offset", next.to_string());
                }
            }
        });
    }
    drop(tx);
    let mut out = std::io::stdout().lock();
    let mut printed = 0u64;
    'outer: while let Ok(answer) = rx.recv() {
        let (partition, answer) = answer?;
        for record in answer["records"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            if args.count.is_some_and(|n| printed >= n) {
                break 'outer;
            }
            if args.conn.json {
                let mut line = record.clone();
                line["partition"] = partition.into();
                writeln!(out, "{line}")?;
            } else {
                if args.print_key {
                    if let Some(key) = value_bytes(record, "key", "key_b64") {
                        out.write_all(&key)?;
                    }
                    out.write_all(args.key_sep.as_bytes())?;
                }
                out.write_all(&value_bytes(record, "value", "value_b64").unwrap_or_default())?;
                out.write_all(b"\n")?;
            }
            printed += 1;
        }
        out.flush()?;
        if args.count.is_some_and(|n| printed >= n) {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn since_accepts_times_millis_and_durations() {
        let now = 1_700_000_000_000;
        assert_eq!(super::since_ms("1699999999000", now).expect("ms"), 1_699_999_999_000);
        assert_eq!(super::since_ms("10m", now).expect("ago"), now - 600_000);
        assert_eq!(
            super::since_ms("2023-11-14T22:13:20Z", now).expect("rfc3339"),
            1_700_000_000_000
        );
        assert!(super::since_ms("yesterday-ish", now).is_err());
    }
}
