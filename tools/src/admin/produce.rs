//! `kappa produce TOPIC`: one record per line of stdin, sent in NDJSON batches.
//!
//! A reader thread takes lines as they come; the sender posts whatever has arrived (up to
//! `--batch` lines) as one request, so an interactive line goes out at once and a piped file goes
//! out in large batches. With `--key-sep`, a line is split at the first separator into key and
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
    #[command(flatten)]
    pub conn: Conn,
}

pub fn run(args: ProduceArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.batch > 0, "--batch must be at least 1");
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
    let mut done = false;
    while !done {
        // Wait for one line, then take whatever else is already there.
        let mut lines = Vec::new();
        match lines_rx.recv() {
            Ok(line) => lines.push(line?),
            Err(_) => break,
        }
        while lines.len() < args.batch {
            match lines_rx.recv_timeout(Duration::from_millis(2)) {
                Ok(line) => lines.push(line?),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => break,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    done = true;
                    break;
                }
            }
        }
        let mut body = Vec::with_capacity(lines.iter().map(|l| l.len() + 24).sum());
        for line in &lines {
            let record = match args.key_sep.as_deref().and_then(|sep| line.split_once(sep)) {
                Some((key, value)) => serde_json::json!({ "key": key, "value": value }),
                None => serde_json::json!({ "value": line }),
            };
            serde_json::to_writer(&mut body, &record)?;
            body.push(b'\n');
        }
        let answer = client.post_raw(&path, &query, "application/x-ndjson", &body)?;
        records += lines.len() as u64;
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
