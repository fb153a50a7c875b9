//! The `kafka` scenario's latency phase: produce-to-consume latency at a fixed offered load
//! (open loop), the stages it is made of, and its floors (one batch written raw, and synced as the
//! log syncs it).

use super::*;

/// What the latency run measured: per batch, from its intended send time to the consumer's
/// receipt (the figure), and the stages before it (where a slow figure comes from).
struct LatencyRun {
    consumed: hdrhistogram::Histogram<u64>,
    /// Due time to the end of the request's write on the producer's socket.
    sent: hdrhistogram::Histogram<u64>,
    /// Due time to the Produce response's arrival.
    acked: hdrhistogram::Histogram<u64>,
    /// Per batch, Produce response arrival to consumer arrival.
    after_ack: hdrhistogram::Histogram<u64>,
    /// Batches whose fetch was sent before their Produce response arrived.
    fetch_waiting: u64,
}

/// Open-loop produce at `batches_s` for `seconds`, a long-polling consumer; latency per batch
/// from its intended send time to its arrival at the consumer.
fn latency(
    addr: std::net::SocketAddr,
    topic: &str,
    batches_s: f64,
    seconds: f64,
    client_cpu: Option<usize>,
) -> anyhow::Result<LatencyRun> {
    let pin = move || {
        if let Some(id) = client_cpu {
            core_affinity::set_for_current(core_affinity::CoreId { id });
        }
    };
    let total = (batches_s * seconds).max(1.0) as u64;
    let interval = Duration::from_secs_f64(1.0 / batches_s);
    // Requests are encoded before the clock starts: the schedule measures the broker.
    let requests: Vec<Bytes> = (0..total)
        .map(|i| {
            let request = produce_request(topic, 1, &batch(i as i64));
            encode_request(PRODUCE_VERSION, &request, i as i32 + 1, "kappa-bench")
                .map(|b| b.freeze())
        })
        .collect::<Result<_, _>>()?;
    let origin = Instant::now() + Duration::from_millis(200);
    let due = move |i: u64| origin + interval.mul_f64(i as f64);
    let deadline = due(total) + Duration::from_secs(60);
    let consumer_topic = topic.to_string();
    type Arrivals = Vec<(u64, Instant, Instant)>;
    let consumer =
        std::thread::spawn(move || -> anyhow::Result<(hdrhistogram::Histogram<u64>, Arrivals)> {
            pin();
            let mut client = Client::connect(addr)?;
            let mut h = crate::new_histogram();
            // (batch, arrival, when the fetch that brought it was sent).
            let mut arrivals = Vec::with_capacity(total as usize);
            let (mut offset, mut seen) = (0i64, 0u64);
            while seen < total {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "the consumer saw {seen} of {total} batches"
                );
                let asked = Instant::now();
                let response: FetchResponse =
                    client.call(FETCH_VERSION, &fetch_request(&consumer_topic, offset, 500))?;
                let arrived = Instant::now();
                let p = &response.responses[0].partitions[0];
                anyhow::ensure!(p.error_code == 0, "fetch failed with error {}", p.error_code);
                let (_, next, stamps) = batches_in(p.records.as_deref().unwrap_or(&[]))?;
                for stamp in stamps {
                    let stamp = u64::try_from(stamp)?;
                    h.saturating_record(
                        arrived.saturating_duration_since(due(stamp)).as_nanos() as u64
                    );
                    arrivals.push((stamp, arrived, asked));
                    seen += 1;
                }
                offset = offset.max(next);
            }
            Ok((h, arrivals))
        });
    let producer = Client::connect(addr)?;
    // Acknowledgements are read on another thread so sends keep their schedule.
    let ack_stream = producer.stream().try_clone()?;
    let acks = std::thread::spawn(
        move || -> anyhow::Result<(hdrhistogram::Histogram<u64>, Vec<Instant>)> {
            pin();
            let mut reader = AckReader { stream: ack_stream };
            let mut h = crate::new_histogram();
            let mut arrivals = Vec::with_capacity(total as usize);
            for i in 0..total {
                reader.next()?;
                let now = Instant::now();
                h.saturating_record(now.saturating_duration_since(due(i)).as_nanos() as u64);
                arrivals.push(now);
            }
            Ok((h, arrivals))
        },
    );
    // The sends on a thread of their own too, so a pinned run pins all three.
    let sender = std::thread::spawn(move || -> anyhow::Result<hdrhistogram::Histogram<u64>> {
        pin();
        let mut sent = crate::new_histogram();
        let mut stream = producer.stream();
        for (i, request) in requests.iter().enumerate() {
            let due = due(i as u64);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            std::io::Write::write_all(&mut stream, request)?;
            sent.saturating_record(Instant::now().saturating_duration_since(due).as_nanos() as u64);
        }
        Ok(sent)
    });
    let sent = sender.join().map_err(|_| anyhow::anyhow!("the sender panicked"))??;
    let (acked, ack_times) =
        acks.join().map_err(|_| anyhow::anyhow!("the ack reader panicked"))??;
    let (consumed, arrivals) =
        consumer.join().map_err(|_| anyhow::anyhow!("the consumer panicked"))??;
    let mut after_ack = crate::new_histogram();
    let mut fetch_waiting = 0;
    for (batch, arrived, asked) in arrivals {
        let Some(&acked_at) = ack_times.get(batch as usize) else { continue };
        after_ack.saturating_record(arrived.saturating_duration_since(acked_at).as_nanos() as u64);
        fetch_waiting += u64::from(asked < acked_at);
    }
    Ok(LatencyRun { consumed, sent, acked, after_ack, fetch_waiting })
}

/// Reads Produce responses off a cloned stream (the sender's correlation ids are not needed:
/// the broker answers in order).
struct AckReader {
    stream: std::net::TcpStream,
}

impl AckReader {
    fn next(&mut self) -> anyhow::Result<()> {
        use std::io::Read;
        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size)?;
        let mut body = vec![0u8; usize::try_from(i32::from_be_bytes(size))?];
        self.stream.read_exact(&mut body)?;
        let mut body = Bytes::from(body);
        use kafka_protocol::protocol::{Decodable, HeaderVersion};
        kafka_protocol::messages::ResponseHeader::decode(
            &mut body,
            ProduceResponse::header_version(PRODUCE_VERSION),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let response = ProduceResponse::decode(&mut body, PRODUCE_VERSION)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        check_produce(&response)
    }
}

/// The floor under the latency figure: one batch's bytes (rounded up to 4 KiB) written with
/// O_DIRECT at queue depth 1, `samples` times on the latency run's schedule (`batches_s`; a
/// write due while the one before is still running starts when it ends), as acks=1 visibility
/// needs one write of the batch to complete before a consumer may see it. With `sync_every`, the
/// writes are synced as the log syncs them under any acks (its unsynced bound,
/// `LogConfig::unsynced_bytes_max`, is twice `sync_every`): an fdatasync starts in the background
/// when `sync_every` bytes are written and not synced (one at a time), and a write that would
/// leave more than twice that unsynced waits for it. Each sample is from when its write could
/// start to its completion (a wait on the bound included).
fn raw_batch_write_latency(
    dir: &std::path::Path,
    bytes: usize,
    samples: usize,
    batches_s: f64,
    sync_every: Option<u64>,
) -> anyhow::Result<hdrhistogram::Histogram<u64>> {
    use std::cell::Cell;
    use std::rc::Rc;
    type Syncing = (glommio::Task<std::io::Result<u64>>, Rc<Cell<bool>>);
    /// An fdatasync in its own task; it covers the `target` bytes written before it started.
    fn start_sync(file: &Rc<glommio::io::DmaFile>, target: u64) -> Syncing {
        let (file, done) = (file.clone(), Rc::new(Cell::new(false)));
        let finished = done.clone();
        let task = glommio::spawn_local(async move {
            let synced = file.fdatasync().await.map_err(std::io::Error::from);
            finished.set(true);
            synced.map(|()| target)
        });
        (task, done)
    }
    let path = dir.join("batch-write-latency.bin");
    let len = bytes.next_multiple_of(4096) as u64;
    let interval = Duration::from_secs_f64(1.0 / batches_s.max(1.0));
    crate::on_executor("bench-raw-latency", 64 << 20, move || async move {
        let file = Rc::new(kappa_storage::io::open_rw(&path).await?);
        let mut latency = crate::new_histogram();
        let mut sync: Option<Syncing> = None;
        let (mut written, mut synced) = (0u64, 0u64);
        let origin = Instant::now();
        for i in 0..samples as u64 {
            let due = origin + interval.mul_f64(i as f64);
            let now = Instant::now();
            if due > now {
                glommio::timer::sleep(due - now).await;
            }
            let mut buf = file.alloc_dma_buffer(len as usize);
            buf.as_bytes_mut().fill(i as u8 | 1);
            let started = Instant::now();
            if let Some(every) = sync_every {
                while written + len > synced + 2 * every {
                    match sync.take() {
                        Some((task, _)) => synced = task.await.context("fdatasync")?,
                        None => sync = Some(start_sync(&file, written)),
                    }
                }
            }
            file.write_at(buf, i * len).await.map_err(std::io::Error::from).context("write")?;
            latency.saturating_record(started.elapsed().as_nanos() as u64);
            written += len;
            if let Some(every) = sync_every {
                if sync.as_ref().is_some_and(|(_, done)| done.get()) {
                    let (task, _) = sync.take().expect("checked");
                    synced = task.await.context("fdatasync")?;
                }
                if sync.is_none() && written - synced >= every {
                    sync = Some(start_sync(&file, written));
                }
            }
        }
        if let Some((task, _)) = sync {
            task.await.context("fdatasync")?;
        }
        if let Ok(file) = Rc::try_unwrap(file) {
            let _ = file.close().await;
        }
        std::fs::remove_file(&path)?;
        Ok(latency)
    })
}

/// How a latency run is driven: `offered` batches/s (`fraction` of the acks=1 rate) for
/// `seconds`, the floor synced every `sync_every` bytes, the client threads on `client_cpu`.
pub(super) struct LatencyPlan {
    pub(super) offered: f64,
    pub(super) fraction: f64,
    pub(super) seconds: f64,
    pub(super) sync_every: u64,
    pub(super) client_cpu: Option<usize>,
}

/// The latency run on a fresh topic at `offered` batches/s; its summary and the histogram of the
/// figure (produce to consume).
pub(super) fn latency_phase(
    engine: &Arc<Engine>,
    dir: &std::path::Path,
    addr: std::net::SocketAddr,
    plan: LatencyPlan,
) -> anyhow::Result<(Latency, hdrhistogram::Histogram<u64>)> {
    let LatencyPlan { offered, fraction, seconds, sync_every, client_cpu } = plan;
    engine.create_topic("kafka-latency", TopicConfig::new(1))?;
    let run = latency(addr, "kafka-latency", offered, seconds, client_cpu)?;
    engine.delete_topic("kafka-latency")?;
    let samples = (run.consumed.len() as usize).clamp(20, 200);
    let bytes = batch(0).len();
    let raw = raw_batch_write_latency(dir, bytes, samples, offered, None)?;
    let synced = raw_batch_write_latency(dir, bytes, samples, offered, Some(sync_every))?;
    let us = |h: &hdrhistogram::Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let histogram = run.consumed;
    let latency = Latency {
        offered_batches_s: offered,
        offered_fraction_of_acks_one_max: fraction,
        samples: histogram.len(),
        p50_us: us(&histogram, 0.5),
        p99_us: us(&histogram, 0.99),
        p999_us: us(&histogram, 0.999),
        max_us: histogram.max() as f64 / 1000.0,
        sent_p50_us: us(&run.sent, 0.5),
        sent_p99_us: us(&run.sent, 0.99),
        acked_p50_us: us(&run.acked, 0.5),
        acked_p99_us: us(&run.acked, 0.99),
        consumed_after_ack_p50_us: us(&run.after_ack, 0.5),
        consumed_after_ack_p99_us: us(&run.after_ack, 0.99),
        fetch_waiting_fraction: run.fetch_waiting as f64 / run.after_ack.len().max(1) as f64,
        raw_batch_write_p50_us: us(&raw, 0.5),
        raw_batch_write_p99_us: us(&raw, 0.99),
        raw_batch_write_synced_p50_us: us(&synced, 0.5),
        raw_batch_write_synced_p99_us: us(&synced, 0.99),
        sync_every_bytes: sync_every,
    };
    eprintln!(
        "  produce-to-consume at {offered:.0} batches/s: p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us ({} batches); request written p50 {:.0} p99 {:.0} us, acked p50 {:.0} p99 {:.0} us",
        latency.p50_us, latency.p99_us, latency.p999_us, latency.samples,
        latency.sent_p50_us, latency.sent_p99_us, latency.acked_p50_us, latency.acked_p99_us,
    );
    eprintln!(
        "  stages: consumer arrival after the Produce response p50 {:.0} us, p99 {:.0} us; {:.0}% of batches found their long poll waiting",
        latency.consumed_after_ack_p50_us,
        latency.consumed_after_ack_p99_us,
        latency.fetch_waiting_fraction * 100.0
    );
    eprintln!(
        "  floor: one batch written raw (O_DIRECT, queue depth 1, same schedule) p50 {:.0} us, p99 {:.0} us; synced as the log (fdatasync at {} MiB unsynced) p50 {:.0} us, p99 {:.0} us",
        latency.raw_batch_write_p50_us,
        latency.raw_batch_write_p99_us,
        sync_every >> 20,
        latency.raw_batch_write_synced_p50_us,
        latency.raw_batch_write_synced_p99_us
    );
    Ok((latency, histogram))
}
