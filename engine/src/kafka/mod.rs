//! The Kafka wire protocol front end: existing Kafka producers, consumers and consumer groups talk
//! to the engine unchanged.
//!
//! **Where the work runs.** Every shard runs a `Node` (`node.rs`): it accepts connections on a
//! duplicate of one listening socket (the kernel hands each connection to whichever shard accepts
//! first, so idle shards take more), parses requests with the `kafka-protocol` crate (`codec.rs`,
//! `conn.rs`), and does each partition's work on the shard that owns the partition. A partition
//! owned elsewhere is reached by sending a `Send` closure to that shard's Kafka job queue
//! (`Node::post`); request bytes travel as reference-counted `Bytes` slices of the request frame,
//! never copied per record. There is no lock on the data path: shard state is `Rc`/`RefCell`, and
//! the topic registry is read through a per-shard cache invalidated by a generation counter.
//!
//! **Produce** (`produce.rs`, `records.rs`, `compression.rs`): batches are checked (v2, CRC32C,
//! record layout), decompressed if compressed (gzip, snappy, lz4, zstd, each with a bounded
//! output), and appended through `PartitionLog::append_records` with the producer's id, epoch and
//! base sequence kept in the stored batch. An uncompressed batch in the stored form (shortest
//! varints, attributes 0, no null value: what every client we test sends) is stored as it arrived,
//! its CRC kept and only its base offset written (`records::Incoming`, `Records::encoded`); any
//! other batch is re-encoded from its parsed records. Compressed batches are stored decompressed, because views,
//! the HTTP API and embedded consumers read records through the stored per-record directory; a
//! fetch therefore returns uncompressed batches (clients accept any codec on fetch). acks 0, 1, -1
//! map to `none`, `written`, `synced`. Idempotent producers are deduplicated per partition by
//! (producer id, epoch, sequence) over the last 5 batches (`idempotence.rs`); the table is rebuilt
//! from the producer fields of the stored batches at the end of the log, so it survives restarts.
//!
//! **Fetch** (`fetch/`): the stored batches are Kafka RecordBatch v2 bytes with their offsets in
//! place, so a fetch sends them unchanged: one copy per batch from the DMA read buffer into the
//! response (responses are assembled on the connection's shard, and `ReadResult` is `!Send`), then
//! the socket write. The response is encoded by hand around those buffers (`fetch/encode.rs`) so
//! they are not copied a second time, and written with vectored sends (`conn.rs`: one `sendmsg`
//! for the whole response when the socket takes it). Long polls honour `max_wait_ms` and `min_bytes`.
//!
//! **Groups** (`group/`): each group is coordinated by the shard owning its partition of the
//! internal topic `__consumer_offsets` (as in Kafka); committed offsets are appended there with
//! `synced` durability and reloaded at start.
//!
//! Bounds: connections (`connections_max`), request size (`request_bytes_max`), bytes buffered per
//! shard for requests and fetch responses (`buffered_bytes_per_shard`), decompressed batch size,
//! requests queued per connection, cached fetch readers per shard, and the buffers a shard keeps
//! to read request frames and copy fetched batches into (16, for items up to 2 MiB: a stream of
//! 1 MiB requests or batches reuses memory instead of faulting in fresh pages for each).

mod admin;
pub mod client;
mod codec;
mod compression;
mod conn;
mod fetch;
mod group;
mod idempotence;
mod node;
mod offsets;
mod produce;
mod records;
mod util;

use std::net::SocketAddr;
use std::os::fd::IntoRawFd;
use std::sync::Arc;
use std::time::Duration;

use crate::config::TopicConfig;
use crate::engine::Engine;
use crate::shard::{Request, ShardJob};

pub use codec::SUPPORTED_APIS;

/// The internal topic holding committed consumer group offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// How the Kafka listener runs.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// Where to listen (port 0 picks a free port; see `KafkaServer::local_addr`).
    pub addr: SocketAddr,
    /// The host clients are told to connect to (Metadata, FindCoordinator). `None`: the listening
    /// IP, which must then not be a wildcard.
    pub advertised_host: Option<String>,
    /// The advertised port; `None`: the bound port.
    pub advertised_port: Option<u16>,
    /// Create a topic when a client asks for it in Metadata (Kafka's default).
    pub auto_create_topics: bool,
    /// Partitions of topics created automatically or with `num_partitions = -1`.
    pub default_partitions: u32,
    /// Retention and segment settings for topics created through Kafka (partitions are ignored).
    pub topic_template: TopicConfig,
    /// Open Kafka connections at most; more are closed at once.
    pub connections_max: usize,
    /// The largest request frame accepted (Kafka's `socket.request.max.bytes`).
    pub request_bytes_max: usize,
    /// Bytes of request frames and fetch responses held in memory per shard at once.
    pub buffered_bytes_per_shard: usize,
    /// The largest fetch response (a client's `max_bytes` is capped to this).
    pub fetch_bytes_max: usize,
    /// The longest a fetch long poll waits (a client's `max_wait_ms` is capped to this).
    pub fetch_wait_max: Duration,
    /// A connection idle (no bytes from the client) this long is closed.
    pub idle_timeout: Duration,
    /// Requests read ahead of their responses per connection.
    pub in_flight_per_connection: usize,
    /// Partitions of `__consumer_offsets` when it is created; `None`: one per shard (groups
    /// spread over the shards, and a small data dir starts with few files).
    pub offsets_topic_partitions: Option<u32>,
    /// How long the first member of an empty group waits for others before the first rebalance.
    pub group_initial_rebalance_delay: Duration,
    pub group_session_timeout_min: Duration,
    pub group_session_timeout_max: Duration,
    /// Bytes at the end of a partition scanned for idempotent producer state on first use.
    pub producer_state_scan_bytes: u64,
    /// The most bytes one compressed batch may decompress to.
    pub decompressed_batch_bytes_max: usize,
    /// Fetch readers kept open per shard between fetches (each holds read-ahead buffers).
    pub fetch_readers_max: usize,
}

impl KafkaConfig {
    pub fn new(addr: SocketAddr) -> Self {
        KafkaConfig {
            addr,
            advertised_host: None,
            advertised_port: None,
            auto_create_topics: true,
            default_partitions: 1,
            topic_template: TopicConfig::new(1),
            connections_max: 1024,
            request_bytes_max: 100 << 20,
            buffered_bytes_per_shard: 256 << 20,
            fetch_bytes_max: 64 << 20,
            fetch_wait_max: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(600),
            in_flight_per_connection: 16,
            offsets_topic_partitions: None,
            group_initial_rebalance_delay: Duration::from_secs(3),
            group_session_timeout_min: Duration::from_secs(6),
            group_session_timeout_max: Duration::from_secs(1800),
            producer_state_scan_bytes: 256 << 20,
            decompressed_batch_bytes_max: 64 << 20,
            fetch_readers_max: 32,
        }
    }

    fn validate(&self) -> Result<(), KafkaError> {
        let bad = |field: &'static str, reason: &str| {
            Err(KafkaError::Config { field, reason: reason.to_string() })
        };
        if self.default_partitions == 0 {
            return bad("default_partitions", "must be at least 1");
        }
        if self.offsets_topic_partitions == Some(0) {
            return bad("offsets_topic_partitions", "must be at least 1");
        }
        if self.connections_max == 0 || self.in_flight_per_connection == 0 {
            return bad("connections_max", "connections and in-flight requests must be >= 1");
        }
        if self.request_bytes_max < 1024 {
            return bad("request_bytes_max", "must be at least 1 KiB");
        }
        if self.buffered_bytes_per_shard < self.request_bytes_max
            || self.buffered_bytes_per_shard < self.fetch_bytes_max
        {
            return bad(
                "buffered_bytes_per_shard",
                "must hold at least one largest request and one largest fetch response",
            );
        }
        if self.fetch_bytes_max < 1024 {
            return bad("fetch_bytes_max", "must be at least 1 KiB");
        }
        if self.group_session_timeout_min > self.group_session_timeout_max {
            return bad("group_session_timeout_min", "must not exceed the maximum");
        }
        if self.decompressed_batch_bytes_max == 0 || self.fetch_readers_max == 0 {
            return bad("decompressed_batch_bytes_max", "limits must be at least 1");
        }
        Ok(())
    }
}

/// Why the Kafka listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("cannot listen for Kafka clients on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid Kafka configuration {field}: {reason}")]
    Config { field: &'static str, reason: String },
    #[error("Kafka listener on shard {shard} failed to start: {reason}")]
    Start { shard: usize, reason: String },
    #[error(transparent)]
    Engine(#[from] crate::Error),
}

/// The running Kafka listener. `stop` (or drop) closes it; stop it before shutting the engine
/// down so no client connection outlives it.
pub struct KafkaServer {
    shared: Arc<node::Shared>,
    addr: SocketAddr,
    stopped: bool,
}

impl KafkaServer {
    /// Binds `config.addr`, creates `__consumer_offsets` if needed, and starts a node on every
    /// shard (each first reloads the committed offsets it coordinates). Returns once all accept.
    pub fn start(engine: &Arc<Engine>, config: KafkaConfig) -> Result<KafkaServer, KafkaError> {
        config.validate()?;
        let listener = std::net::TcpListener::bind(config.addr)
            .map_err(|source| KafkaError::Bind { addr: config.addr, source })?;
        // Non-blocking before it is duplicated: every shard's accept must stay non-blocking
        // (the duplicates share the file status flags).
        listener
            .set_nonblocking(true)
            .map_err(|source| KafkaError::Bind { addr: config.addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| KafkaError::Bind { addr: config.addr, source })?;
        let host = match &config.advertised_host {
            Some(host) if !host.is_empty() => host.clone(),
            Some(_) => return Err(config_error("advertised_host", "must not be empty")),
            None if addr.ip().is_unspecified() => {
                return Err(config_error(
                    "advertised_host",
                    "is needed when listening on every interface: clients must be told an \
                     address they can reach",
                ))
            }
            None => addr.ip().to_string(),
        };
        let port = i32::from(config.advertised_port.unwrap_or(addr.port()));

        let partitions = config.offsets_topic_partitions.unwrap_or(engine.shard_count() as u32);
        let mut offsets = TopicConfig::new(partitions.max(1));
        offsets.segment_size_bytes_max = Some(64 << 20);
        engine.ensure_topic(OFFSETS_TOPIC, offsets)?;
        let data_dir = engine.config().data_dir.clone();
        let producer_ids = idempotence::IdAllocator::open(&engine.config().log.disk, &data_dir)
            .map_err(|e| KafkaError::Start { shard: 0, reason: e.to_string() })?;

        let shards = engine.shard_count();
        let mut senders = Vec::with_capacity(shards);
        let mut receivers = Vec::with_capacity(shards);
        for _ in 0..shards {
            let (tx, rx) = flume::bounded(1024);
            senders.push(tx);
            receivers.push(rx);
        }
        let shared = Arc::new(node::Shared::new(node::SharedParts {
            config,
            inner: engine.inner().clone(),
            engine: Arc::downgrade(engine),
            peers: senders,
            host,
            port,
            cluster_id: cluster_id(&data_dir),
            producer_ids,
        }));
        let mut ready = Vec::with_capacity(shards);
        for (index, jobs) in receivers.into_iter().enumerate() {
            let fd = listener
                .try_clone()
                .map_err(|source| KafkaError::Bind { addr, source })?
                .into_raw_fd();
            let (ready_tx, ready_rx) = flume::bounded(1);
            let shared = shared.clone();
            let job: ShardJob = Box::new(move |shard| {
                Box::pin(node::run(shard, index, shared, fd, jobs, ready_tx))
            });
            engine.inner().send_blocking(index, Request::Run(job))?;
            ready.push(ready_rx);
        }
        drop(listener);
        let server = KafkaServer { shared, addr, stopped: false };
        for (shard, ready) in ready.into_iter().enumerate() {
            match ready.recv() {
                Ok(Ok(())) => {}
                Ok(Err(reason)) => return Err(KafkaError::Start { shard, reason }),
                Err(_) => return Err(KafkaError::Start { shard, reason: "shard stopped".into() }),
            }
        }
        tracing::info!(%addr, shards, "Kafka listener started");
        Ok(server)
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, closes every Kafka connection (requests in flight are dropped; clients
    /// retry), and waits until every shard is done.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        let mut waiting = Vec::new();
        for peer in &self.shared.peers {
            let (tx, rx) = flume::bounded::<()>(1);
            let job: node::Job = Box::new(move |node| {
                Box::pin(async move {
                    node.close().await;
                    let _ = tx.send(());
                })
            });
            if peer.send(job).is_ok() {
                waiting.push(rx);
            }
        }
        for rx in waiting {
            // An engine already shut down drops the job: nothing left to wait for.
            let _ = rx.recv();
        }
        tracing::info!(addr = %self.addr, "Kafka listener stopped");
    }
}

impl Drop for KafkaServer {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

fn config_error(field: &'static str, reason: &str) -> KafkaError {
    KafkaError::Config { field, reason: reason.to_string() }
}

/// A cluster id stable for a data dir (clients only compare it).
fn cluster_id(data_dir: &std::path::Path) -> String {
    let path = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let hash = xxhash_rust::xxh3::xxh3_128(path.as_os_str().as_encoded_bytes());
    format!("kappa-{hash:032x}")
}
