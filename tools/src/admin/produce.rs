//! `kappa produce TOPIC`: one record per line of stdin, sent in NDJSON batches.
//!
//! A reader thread takes lines as they come; the sender posts whatever has arrived (up to
//! `--batch` lines and `--batch-bytes` of NDJSON) as one request, so an interactive line goes out
//! at once and a piped file goes out in large batches. The byte bound keeps a request under the
//! server's limits (the body limit, and the storage's 16 MiB of records per partition in one
//! request) whatever the line length; a line alone over them is refused by the server with the
//! limit it broke. With `--key-sep`, a line is split at the first separator into key and
//! value. Every batch is acknowledged before the next is sent, so the order of lines is kept
//! within each partition.

use std::io::BufRead;
use std::time::Duration;

use super::{Client, Conn};

#[derive(Debug, Clone, clap::Args)]
pub struct ProduceArgs {
    pub topic: String,
    /// Split each line at the first SEP into key and value (lines without it have no key).
    #[arg(long, value_name = "SEP")]
    pub key_sep: Option<String>,
    /// none, written or synced (default: the server's).
    #[arg(long)]
    pub durability: Option<String>,
    /// Lines per request, at most.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// NDJSON bytes per request, at most (a single longer line goes alone).
    #[arg(long, default_value_t = 4 << 20)]
    pub batch_bytes: usize,
    #[command(flatten)]
    pub conn: Conn,
}

pub fn run(args: ProduceArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.batch > 0, "--batch must be at least 1");
    anyhow::ensure!(args.batch_bytes > 0, "--batch-bytes must be at least 1");
    if let Some(sep) = &args.key_sep {
        anyhow::ensure!(!sep.is_empty(), "--key-sep must not be empty");
    }
    let client = Client::new(&args.conn);
    let (lines_tx, lines_rx) =
        std::sync::mpsc::sync_channel::<std::io::Result<String>>(args.batch * 4);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut query = Vec::new();
    if let Some(d) = &args.durability {
        query.push(("durability", d.clone()));
    }
    let path = format!("/v1/topics/{}/records", args.topic);
    let (mut records, mut batches) = (0u64, 0u64);
    let mut ranges: std::collections::BTreeMap<u64, (u64, u64)> = Default::default();
    let encode = |line: &str, body: &mut Vec<u8>| -> anyhow::Result<()> {
        let record = match args.key_sep.as_deref().and_then(|sep| line.split_once(sep)) {
            Some((key, value)) => serde_json::json!({ "key": key, "value": value }),
            None => serde_json::json!({ "value": line }),
        };
        serde_json::to_writer(&mut *body, &record)?;
        body.push(b'\n');
        Ok(())
    };
    // A line that did not fit the previous request starts the next one.
    let mut carried: Option<Vec<u8>> = None;
    let mut done = false;
    while !done || carried.is_some() {
        // Wait for one line, then take whatever else is already there.
        let mut body = carried.take().unwrap_or_default();
        let mut count = usize::from(!body.is_empty());
        if count == 0 {
            match lines_rx.recv() {
                Ok(line) => encode(&line?, &mut body)?,
                Err(_) => break,
            }
            count = 1;
        }
        while count < args.batch && !done {
            match lines_rx.recv_timeout(Duration::from_millis(2)) {
                Ok(line) => {
                    let mut one = Vec::new();
                    encode(&line?, &mut one)?;
                    if body.len() + one.len() > args.batch_bytes {
                        carried = Some(one);
                        break;
                    }
                    body.extend_from_slice(&one);
                    count += 1;
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => break,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => done = true,
            }
        }
        let answer = client.post_raw(&path, &query, "application/x-ndjson", &body)?;
        records += count as u64;
        batches += 1;
        if args.conn.json {
            println!("{answer}");
        }
        for p in answer["partitions"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            let (Some(partition), Some(base), Some(last)) =
                (p["partition"].as_u64(), p["base_offset"].as_u64(), p["last_offset"].as_u64())
            else {
                continue;
            };
            let range = ranges.entry(partition).or_insert((base, last));
            range.0 = range.0.min(base);
            range.1 = range.1.max(last);
        }
    }
    if !args.conn.json {
        let parts: Vec<String> =
            ranges.iter().map(|(p, (a, b))| format!("p{p}: {a}..={b}")).collect();
        eprintln!(
            "produced {records} record(s) to {} in {batches} request(s) ({})",
            args.topic,
            if parts.is_empty() { "nothing".to_string() } else { parts.join(", ") }
        );
    }
    Ok(())
}
