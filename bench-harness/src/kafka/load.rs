//! The `kafka` scenario's load: Produce requests and fetches of history through our own client,
//! and the embedded API doing the same, each timed as its figure needs.

use super::*;

/// One Produce request for `topic`/0 carrying `batch`.
pub(super) fn produce_request(topic: &str, acks: i16, batch: &Bytes) -> ProduceRequest {
    ProduceRequest::default().with_acks(acks).with_timeout_ms(30_000).with_topic_data(vec![
        TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(batch.clone()))]),
    ])
}

/// A batch of 1000 records of 1 KiB whose base timestamp is `stamp` (the latency run numbers
/// its batches that way).
pub(super) fn batch(stamp: i64) -> Bytes {
    let value = vec![0x5au8; VALUE_BYTES];
    let keys: Vec<[u8; KEY_BYTES]> = (0..BATCH)
        .map(|i| {
            let mut k = [b'k'; KEY_BYTES];
            k[..8].copy_from_slice(&(i as u64).to_be_bytes());
            k
        })
        .collect();
    let records: Vec<Record<'_>> =
        keys.iter().map(|k| Record::new(stamp, Some(k.as_slice()), &value)).collect();
    Bytes::from(record_batch(&records, ProducerInfo::default(), Compression::None))
}

pub(super) fn check_produce(response: &ProduceResponse) -> anyhow::Result<()> {
    let p = response
        .responses
        .first()
        .and_then(|t| t.partition_responses.first())
        .context("an empty produce response")?;
    anyhow::ensure!(p.error_code == 0, "produce failed with error {}", p.error_code);
    Ok(())
}

/// Produces `batches` batches into `topic` over `CONNECTIONS` connections with `IN_FLIGHT`
/// requests each, until the last is acknowledged (timed by `timed`).
pub(super) fn produce(
    addr: std::net::SocketAddr,
    topic: &str,
    acks: i16,
    batches: u64,
) -> anyhow::Result<()> {
    let payload = batch(0);
    let next = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let (payload, next, topic) = (payload.clone(), next.clone(), topic.to_string());
            std::thread::spawn(move || -> anyhow::Result<()> {
                let mut client = Client::connect(addr)?;
                // Encoded once; each send only sets the correlation id in place.
                let request = produce_request(&topic, acks, &payload);
                let mut frame = encode_request(PRODUCE_VERSION, &request, 0, "kappa-bench")?;
                let mut pending = std::collections::VecDeque::new();
                loop {
                    while pending.len() < IN_FLIGHT
                        && next.fetch_add(1, Ordering::Relaxed) < batches
                    {
                        pending.push_back(client.send_encoded(&mut frame)?);
                    }
                    let Some(correlation) = pending.pop_front() else { return Ok(()) };
                    check_produce(
                        &client.receive::<ProduceRequest>(PRODUCE_VERSION, correlation)?,
                    )?;
                }
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| anyhow::anyhow!("a producer thread panicked"))??;
    }
    Ok(())
}

pub(super) fn fetch_request(topic: &str, offset: i64, max_wait_ms: i32) -> FetchRequest {
    FetchRequest::default()
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(64 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(FETCH_PARTITION_BYTES)])])
}

/// (records, next offset, base timestamps) of fetched batches, from their v2 headers.
pub(super) fn batches_in(records: &[u8]) -> anyhow::Result<(u64, i64, Vec<i64>)> {
    let (mut count, mut next, mut stamps, mut at) = (0u64, -1i64, Vec::new(), 0usize);
    while at + 61 <= records.len() {
        let base = i64::from_be_bytes(records[at..at + 8].try_into()?);
        let length = i32::from_be_bytes(records[at + 8..at + 12].try_into()?) as usize;
        let delta = i32::from_be_bytes(records[at + 23..at + 27].try_into()?);
        stamps.push(i64::from_be_bytes(records[at + 27..at + 35].try_into()?));
        count += u64::try_from(i32::from_be_bytes(records[at + 57..at + 61].try_into()?))?;
        next = base + i64::from(delta) + 1;
        at += 12 + length;
    }
    Ok((count, next, stamps))
}

/// Fetches `topic`/0 from offset 0 until `records` are read; MB/s of key+value bytes.
pub(super) fn fetch_history(
    addr: std::net::SocketAddr,
    topic: &str,
    records: u64,
) -> anyhow::Result<f64> {
    let mut client = Client::connect(addr)?;
    crate::perfctl::profiling(true);
    let started = Instant::now();
    let (mut offset, mut read) = (0i64, 0u64);
    while read < records {
        let response: FetchResponse =
            client.call(FETCH_VERSION, &fetch_request(topic, offset, 500))?;
        let p = &response.responses[0].partitions[0];
        anyhow::ensure!(p.error_code == 0, "fetch failed with error {}", p.error_code);
        let (count, next, _) = batches_in(p.records.as_deref().unwrap_or(&[]))?;
        anyhow::ensure!(count > 0, "a fetch at offset {offset} of {records} returned nothing");
        read += count;
        offset = next;
    }
    let elapsed = started.elapsed();
    crate::perfctl::profiling(false);
    Ok(mb_s(read * (VALUE_BYTES + KEY_BYTES) as u64, elapsed))
}

/// The embedded API's side of a pair: the same records (1000 keyed 1 KiB records per packed
/// batch) appended by `CONNECTIONS` producer threads with `IN_FLIGHT` batches pending each, at
/// `durability`, until the last is acknowledged (timed by `timed`).
pub(super) fn embedded_produce(
    engine: &Arc<Engine>,
    topic: &str,
    durability: Durability,
    batches: u64,
) -> anyhow::Result<()> {
    let value = vec![0x5au8; VALUE_BYTES];
    let mut packed = ProducerBatch::with_capacity(BATCH, BATCH * (VALUE_BYTES + KEY_BYTES));
    for i in 0..BATCH {
        let mut k = [b'k'; KEY_BYTES];
        k[..8].copy_from_slice(&(i as u64).to_be_bytes());
        packed.push(Some(&k), &value, Some(0));
    }
    let next = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let producer = engine.producer().with_durability(durability);
            let (packed, next, topic) = (packed.clone(), next.clone(), topic.to_string());
            std::thread::spawn(move || -> anyhow::Result<()> {
                let mut pending = std::collections::VecDeque::new();
                loop {
                    while pending.len() < IN_FLIGHT
                        && next.fetch_add(1, Ordering::Relaxed) < batches
                    {
                        pending.push_back(producer.send_packed_nowait(&topic, packed.clone())?);
                    }
                    let Some(acks) = pending.pop_front() else { return Ok(()) };
                    for ack in acks {
                        ack.wait()?;
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| anyhow::anyhow!("a producer thread panicked"))??;
    }
    Ok(())
}

/// The embedded consumer reading `topic`/0 from the beginning until `records` are read; MB/s of
/// key+value bytes (it touches each record's key and value, as a fetch's client would decode them).
pub(super) fn embedded_read(
    engine: &Arc<Engine>,
    topic: &str,
    records: u64,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut consumer = engine.consumer(topic, 0, Seek::Beginning)?;
    let (mut read, mut bytes) = (0u64, 0u64);
    while read < records {
        let batch = consumer
            .next_batch_timeout(Duration::from_secs(30))?
            .with_context(|| format!("the embedded consumer stalled at {read} of {records}"))?;
        for r in batch.records() {
            bytes += (r.key().map_or(0, <[u8]>::len) + r.value().len()) as u64;
            read += 1;
        }
    }
    Ok(mb_s(bytes, started.elapsed()))
}
