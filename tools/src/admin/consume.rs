//! `kappa consume TOPIC`: prints records, one per line, from every partition (or one).
//!
//! A few worker threads (at most `WORKERS`, each one connection) share the partitions: a worker
//! reads each of its partitions without waiting, and when none had anything it long-polls one of
//! them (`wait_ms`, rotating), so an idle consumer sleeps in the server instead of polling, a
//! record in the polled partition appears at once and one in another within about a second, and
//! a topic with more partitions than the server's connection limit can still be read. Without
//! `--count` it follows forever. Where it starts: the end (new records
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

/// Threads (and so connections) one consumer uses at most.
const WORKERS: usize = 4;
/// How long a long poll waits for a record.
const WAIT_MS: &str = "1000";

/// One worker: reads `partitions` in turn, long-polling one of them when a round found nothing.
fn follow(
    client: &Client,
    topic: &str,
    partitions: Vec<u32>,
    start: (&'static str, String),
    stop: &AtomicBool,
    tx: &std::sync::mpsc::SyncSender<anyhow::Result<(u32, Value)>>,
) {
    let mut positions: Vec<(&str, String)> = vec![start; partitions.len()];
    let mut polled = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let mut found = false;
        for i in 0..partitions.len() {
            // The partition long-polled below is not read twice in a round.
            if i == polled && partitions.len() > 1 && !found {
                continue;
            }
            match read(client, topic, partitions[i], &mut positions[i], "0", tx) {
                Some(got) => found |= got,
                None => return,
            }
        }
        if !found {
            let i = polled;
            if read(client, topic, partitions[i], &mut positions[i], WAIT_MS, tx).is_none() {
                return;
            }
            polled = (polled + 1) % partitions.len();
        }
    }
}

/// One read from `position`; sends the answer on. `Some(true)` when it held records, `None`
/// when the consumer is done (the receiver left, or an error that was passed on).
fn read(
    client: &Client,
    topic: &str,
    partition: u32,
    position: &mut (&str, String),
    wait_ms: &str,
    tx: &std::sync::mpsc::SyncSender<anyhow::Result<(u32, Value)>>,
) -> Option<bool> {
    let path = format!("/v1/topics/{topic}/partitions/{partition}/records");
    let query = [position.clone(), ("wait_ms", wait_ms.into()), ("max_records", "1000".into())];
    let mut answer = client.get_query(&path, &query);
    // A server at its connection or memory limit answers 503: wait and try again.
    let mut retries = 0;
    while answer.as_ref().is_err_and(|e| e.to_string().contains(" 503 ")) && retries < 60 {
        std::thread::sleep(std::time::Duration::from_millis(500));
        retries += 1;
        answer = client.get_query(&path, &query);
    }
    let answer = match answer {
        Ok(a) => a,
        Err(e) => {
            let _ = tx.send(Err(e));
            return None;
        }
    };
    let got = answer["records"].as_array().is_some_and(|r| !r.is_empty());
    if let Some(next) = answer["next_offset"].as_u64() {
        *position = ("offset", next.to_string());
    }
    tx.send(Ok((partition, answer))).ok()?;
    Some(got)
}

pub fn run(args: ConsumeArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.conn);
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
    let start: (&'static str, String) = if args.from_beginning {
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
    let workers = chosen.len().clamp(1, WORKERS);
    for worker in 0..workers {
        let mine: Vec<u32> = chosen.iter().copied().skip(worker).step_by(workers).collect();
        let (client, tx, stop, start, topic) = (
            Arc::new(Client::new(&args.conn)),
            tx.clone(),
            stop.clone(),
            start.clone(),
            args.topic.clone(),
        );
        std::thread::spawn(move || follow(&client, &topic, mine, start, &stop, &tx));
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
