//! The `http` scenario: records ingested per second through the appliance's HTTP API (NDJSON
//! batches of 1000 records) beside the embedded API's rate on the same engine, in the same run.
//!
//! One engine is started as `kappa serve` would (its default shard count and CPUs); the embedded
//! rate is measured first with producer threads sending packed batches of 1000 records, then the
//! HTTP API is started over the same engine (`kappa_tools::serve::Background`) and client threads
//! post the same records as NDJSON, keep-alive, each waiting for its answer. Both at `written`,
//! 100-byte values, unkeyed (a batch goes to one partition, round robin), measured in alternating
//! runs; the figure is the median ratio. Clients run in this process, on the same cores as the
//! server and the shards, as a client on the same machine would. Target: at least 0.5.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use kappa_engine::{Durability, Engine, ProducerBatch, TopicConfig};
use serde::Serialize;

use crate::report::{Figure, Outcome};
use crate::{Machine, Spread};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: crate::Common,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Paired runs (embedded, then HTTP).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Value bytes.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Client (and embedded producer) threads.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// HTTP runtime threads (default: the appliance's).
    #[arg(long)]
    http_threads: Option<usize>,
}

const BATCH: usize = 1000;
const TOPIC: &str = "bench";

#[derive(Debug, Serialize)]
struct Report {
    scenario: &'static str,
    machine: Machine,
    shards: usize,
    http_threads: usize,
    clients: usize,
    batch_records: usize,
    value_bytes: usize,
    seconds_per_run: f64,
    embedded_records_s: Vec<f64>,
    http_records_s: Vec<f64>,
    ratios: Vec<f64>,
    ratio: Spread,
    notes: &'static str,
}

fn values(size: usize) -> Vec<String> {
    // Printable, no characters JSON escapes: the HTTP body carries them as plain strings.
    (0..BATCH)
        .map(|i| {
            let mut state = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            (0..size)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    char::from(b'a' + (state % 26) as u8)
                })
                .collect()
        })
        .collect()
}

/// Runs `work` on `threads` threads for `seconds`; returns records per second.
fn measure(
    threads: usize,
    seconds: f64,
    work: impl Fn() -> anyhow::Result<u64> + Send + Sync + 'static,
) -> anyhow::Result<f64> {
    let work = Arc::new(work);
    let stop = Arc::new(AtomicBool::new(false));
    let records = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (work, stop, records) = (work.clone(), stop.clone(), records.clone());
            std::thread::spawn(move || -> anyhow::Result<()> {
                while !stop.load(Ordering::Relaxed) {
                    records.fetch_add(work()?, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
    }
    Ok(records.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

pub fn scenario(args: Args) -> anyhow::Result<Outcome> {
    let (seconds, runs) =
        if args.common.quick { (0.5, 1) } else { (args.seconds, args.runs.max(1)) };
    let temp = args.common.scratch("http")?;
    let machine = Machine::probe(temp.path());
    let overrides = kappa_tools::serve::config::Overrides {
        data_dir: Some(temp.path().to_path_buf()),
        http_addr: Some("127.0.0.1:0".into()),
        ..Default::default()
    };
    let mut settings =
        kappa_tools::serve::config::parse("", std::path::Path::new("<bench>"), &overrides)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(t) = args.http_threads {
        settings.config.http.threads = t;
    }
    let http_threads = settings.config.http.threads;
    let (engine_config, _) =
        kappa_tools::serve::app::engine_config(&settings, temp.path().to_path_buf());
    let engine = Engine::start(engine_config).context("starting the engine")?;
    let shards = engine.shard_count();
    engine.create_topic(TOPIC, TopicConfig::new(4))?;
    let values = Arc::new(values(args.value_size));
    eprintln!("http: {shards} shard(s), {http_threads} HTTP thread(s), {} clients, batches of {BATCH} x {} B", args.clients, args.value_size);

    // The same records as NDJSON, built once (the client's cost is sending them).
    let mut body = Vec::with_capacity(BATCH * (args.value_size + 16));
    for v in values.iter() {
        body.extend_from_slice(b"{\"value\":\"");
        body.extend_from_slice(v.as_bytes());
        body.extend_from_slice(b"\"}\n");
    }
    let body: Arc<Vec<u8>> = Arc::new(body);

    let server = kappa_tools::serve::Background::start(engine, settings)?;
    let url = format!("http://{}/v1/topics/{TOPIC}/records?durability=written", server.addr);
    let mut embedded = Vec::new();
    let mut http = Vec::new();
    for run in 0..runs {
        let producer = server.engine().producer().with_durability(Durability::Written);
        let vals = values.clone();
        let e = measure(args.clients, seconds, move || {
            let mut batch = ProducerBatch::with_capacity(BATCH, BATCH * vals[0].len());
            for v in vals.iter() {
                batch.push(None, v.as_bytes(), None);
            }
            producer.send_packed(TOPIC, batch)?;
            Ok(BATCH as u64)
        })?;
        let (url, body) = (url.clone(), body.clone());
        let h = measure(args.clients, seconds, move || {
            thread_local! {
                static AGENT: ureq::Agent = ureq::config::Config::builder()
                    .http_status_as_error(false)
                    .build()
                    .new_agent();
            }
            AGENT.with(|agent| -> anyhow::Result<u64> {
                let mut response = agent
                    .post(&url)
                    .header("content-type", "application/x-ndjson")
                    .send(&body[..])
                    .context("posting a batch")?;
                let status = response.status();
                let _ = response.body_mut().read_to_vec();
                anyhow::ensure!(status == 200, "the server answered {status}");
                Ok(BATCH as u64)
            })
        })?;
        eprintln!(
            "http: run {}: embedded {e:.0} records/s, HTTP {h:.0} records/s, ratio {:.2}",
            run + 1,
            h / e
        );
        embedded.push(e);
        http.push(h);
    }
    server.stop()?;
    let ratios: Vec<f64> = http.iter().zip(&embedded).map(|(h, e)| h / e).collect();
    let ratio = Spread::of(&ratios);
    let embedded_pairs: Vec<(f64, f64)> =
        embedded.iter().copied().zip(http.iter().copied()).collect();
    let report = Report {
        scenario: "http",
        machine,
        shards,
        http_threads,
        clients: args.clients,
        batch_records: BATCH,
        value_bytes: args.value_size,
        seconds_per_run: seconds,
        embedded_records_s: embedded,
        http_records_s: http,
        ratios,
        ratio,
        notes: "Paired runs on one engine: embedded producers (packed batches) then HTTP clients \
                (NDJSON, keep-alive) in the same process, `written`, unkeyed. The ratio is the \
                median of the per-pair ratios; clients share the cores with server and shards.",
    };
    let mut pairs = crate::stats::Pairs::default();
    for (e, h) in embedded_pairs {
        pairs.push(e, h);
    }
    let mut outcome = Outcome::new("http", serde_json::to_value(&report)?);
    outcome.figures.push(Figure::median(
        "http",
        "embedded records/s",
        &Spread::of(&report.embedded_records_s),
        "rec/s",
    ));
    outcome.figures.push(Figure::paired(
        "http",
        "HTTP NDJSON records/s",
        "rec/s",
        "embedded",
        &pairs.summary(),
        0.5,
    ));
    Ok(outcome)
}
