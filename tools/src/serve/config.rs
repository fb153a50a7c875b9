//! `kappa.toml`: the appliance's configuration, its defaults, and errors that point at the key.
//!
//! An operator edits this file by hand, so a mistake must say where it is: every error names the
//! key (`views.temps.window.size_ms`), its line and column, and what is wrong, and `kappa serve`
//! exits 2 before it touches the data dir. Type errors and unknown keys come from serde (with the
//! span toml gives them); rules serde cannot express are checked here and located by walking a
//! span-keeping parse of the same text. Flags (`--data-dir`, `--http-addr`, `--kafka-addr`)
//! override the file and are checked the same way.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use kappa_engine::Durability;

use super::spec::ViewSpec;

mod spans;
use spans::{key_in_text, line_column, Spans};

/// Where the HTTP API listens unless told otherwise.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:9680";
/// Where the Kafka wire protocol listener listens unless told otherwise.
pub const DEFAULT_KAFKA_ADDR: &str = "127.0.0.1:9092";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default)]
    pub engine: EngineSection,
    #[serde(default)]
    pub http: HttpSection,
    #[serde(default)]
    pub kafka: KafkaSection,
    #[serde(default)]
    pub log: LogSection,
    #[serde(default)]
    pub topic_defaults: TopicDefaults,
    /// `[topics.NAME]`: created at start unless they exist.
    #[serde(default)]
    pub topics: BTreeMap<String, TopicSection>,
    /// `[views.NAME]`: created or resumed at start.
    #[serde(default)]
    pub views: BTreeMap<String, ViewSpec>,
    #[serde(default)]
    pub debug: DebugSection,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("kappa-data")
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSection {
    /// Shards; default: one per CPU in `cpus` (or per CPU this process may use, minus the ones
    /// kept for the HTTP threads).
    pub shards: Option<usize>,
    /// CPUs the shards are pinned to.
    pub cpus: Option<Vec<usize>>,
    pub live_latency_budget_ms: u64,
    pub default_durability: DurabilityKind,
    /// Pinned DMA memory per shard, in MiB.
    pub io_memory_mib: Option<usize>,
    /// On SIGTERM, after HTTP drained, the engine gets this long to flush, sync and checkpoint;
    /// past it the process exits 1 (every acknowledged record is already written or synced).
    pub shutdown_timeout_ms: u64,
}

impl Default for EngineSection {
    fn default() -> Self {
        EngineSection {
            shards: None,
            cpus: None,
            live_latency_budget_ms: 5,
            default_durability: DurabilityKind::Written,
            io_memory_mib: None,
            shutdown_timeout_ms: 30_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityKind {
    None,
    Written,
    Synced,
}

impl From<DurabilityKind> for Durability {
    fn from(kind: DurabilityKind) -> Durability {
        match kind {
            DurabilityKind::None => Durability::None,
            DurabilityKind::Written => Durability::Written,
            DurabilityKind::Synced => Durability::Synced,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    pub addr: String,
    /// Threads of the HTTP runtime (outside the shards). Parsing NDJSON is CPU work: one thread
    /// ingested 0.37x the embedded rate in `kappa-bench http`, two 0.5-0.6x (2-CPU machine).
    pub threads: usize,
    /// CPUs kept free of shards for the HTTP threads (when the machine has more than this).
    pub reserved_cpus: usize,
    /// Bearer token every request but `/health` and `/ready` must carry. Required when `addr`
    /// is not a loopback address.
    pub token: Option<String>,
    /// Reads the token from this file instead (first line).
    pub token_file: Option<PathBuf>,
    pub max_body_bytes: usize,
    /// Request body bytes all requests together may hold at once; past it a request gets 503
    /// with `Retry-After` (bounded memory whatever clients send). At least `max_body_bytes`.
    pub max_in_flight_body_bytes: usize,
    pub max_batch_records: usize,
    pub max_read_records: usize,
    pub max_connections: usize,
    /// A client must send a request's headers within this time.
    pub header_timeout_ms: u64,
    /// ... and its body within this time.
    pub body_timeout_ms: u64,
    /// A whole request (not a stream) must be answered within this time.
    pub request_timeout_ms: u64,
    /// A client that does not read a response for this long is cut off.
    pub write_timeout_ms: u64,
    /// On SIGTERM, in-flight requests get this long to finish.
    pub shutdown_timeout_ms: u64,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            addr: DEFAULT_HTTP_ADDR.to_string(),
            threads: 2,
            reserved_cpus: 1,
            token: None,
            token_file: None,
            max_body_bytes: 64 << 20,
            max_in_flight_body_bytes: 128 << 20,
            max_batch_records: 100_000,
            max_read_records: 10_000,
            max_connections: 256,
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            request_timeout_ms: 60_000,
            write_timeout_ms: 30_000,
            shutdown_timeout_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSection {
    /// Serve the Kafka wire protocol (producers, consumers, consumer groups).
    pub enabled: bool,
    pub addr: String,
    /// The host clients are told to connect to; needed when `addr` is a wildcard.
    pub advertised_host: Option<String>,
    pub advertised_port: Option<u16>,
    /// Create a topic when a Kafka client first asks for it (Kafka's default).
    pub auto_create_topics: bool,
    /// Partitions of topics created by Kafka clients without a count.
    pub default_partitions: u32,
    pub max_connections: usize,
    pub max_request_bytes: usize,
    /// Request frames and fetch responses held in memory per shard, MiB.
    pub buffer_mib_per_shard: usize,
    pub max_fetch_bytes: usize,
    pub max_fetch_wait_ms: u64,
    pub idle_timeout_ms: u64,
    /// Partitions of `__consumer_offsets` when it is first created (default: one per shard).
    pub offsets_topic_partitions: Option<u32>,
    pub group_initial_rebalance_delay_ms: u64,
    pub group_min_session_timeout_ms: u64,
    pub group_max_session_timeout_ms: u64,
}

impl Default for KafkaSection {
    fn default() -> Self {
        KafkaSection {
            enabled: true,
            addr: DEFAULT_KAFKA_ADDR.to_string(),
            advertised_host: None,
            advertised_port: None,
            auto_create_topics: true,
            default_partitions: 1,
            max_connections: 1024,
            max_request_bytes: 100 << 20,
            buffer_mib_per_shard: 256,
            max_fetch_bytes: 64 << 20,
            max_fetch_wait_ms: 30_000,
            idle_timeout_ms: 600_000,
            offsets_topic_partitions: None,
            group_initial_rebalance_delay_ms: 3_000,
            group_min_session_timeout_ms: 6_000,
            group_max_session_timeout_ms: 1_800_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    pub format: LogFormat,
    /// A tracing filter: `info`, `warn,kappa_engine=debug`, ...
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection { format: LogFormat::Text, level: "info".to_string() }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicDefaults {
    pub retention_ms: Option<i64>,
    pub retention_bytes: Option<u64>,
    pub segment_bytes: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSection {
    pub partitions: u32,
    #[serde(default)]
    pub retention_ms: Option<i64>,
    #[serde(default)]
    pub retention_bytes: Option<u64>,
    #[serde(default)]
    pub segment_bytes: Option<u64>,
}

/// Fault injection for tests (a delay before every append, so requests stay in flight).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DebugSection {
    pub append_delay_ms: Option<u64>,
}

/// A checked configuration, ready to start from.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config: Config,
    pub http_addr: SocketAddr,
    pub kafka_addr: SocketAddr,
    pub token: Option<String>,
    pub default_durability: Durability,
    pub log_format: LogFormat,
    /// The file and its text, to point at keys in errors found after parsing.
    file: PathBuf,
    text: String,
}

impl Settings {
    pub fn millis(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    /// An error about `key` of the config file, with its line and column.
    pub fn error_at(&self, key: &[&str], message: String) -> ConfigError {
        let span = Spans::parse(&self.text).locate(key);
        let (line, column) = line_column(&self.text, span.start);
        ConfigError::File { path: self.file.clone(), key: key.join("."), line, column, message }
    }
}

impl Settings {
    /// The Kafka listener's configuration (`kafka_addr` is the flag or the file's address).
    pub fn kafka_config(&self) -> kappa_engine::kafka::KafkaConfig {
        let k = &self.config.kafka;
        let mut c = kappa_engine::kafka::KafkaConfig::new(self.kafka_addr);
        c.advertised_host = k.advertised_host.clone();
        c.advertised_port = k.advertised_port;
        c.auto_create_topics = k.auto_create_topics;
        c.default_partitions = k.default_partitions;
        let defaults = &self.config.topic_defaults;
        c.topic_template.retention_ms_max = defaults.retention_ms;
        c.topic_template.retention_bytes_max = defaults.retention_bytes;
        c.topic_template.segment_size_bytes_max = defaults.segment_bytes;
        c.connections_max = k.max_connections;
        c.request_bytes_max = k.max_request_bytes;
        c.buffered_bytes_per_shard = k.buffer_mib_per_shard << 20;
        c.fetch_bytes_max = k.max_fetch_bytes;
        c.fetch_wait_max = Duration::from_millis(k.max_fetch_wait_ms);
        c.idle_timeout = Duration::from_millis(k.idle_timeout_ms);
        c.offsets_topic_partitions = k.offsets_topic_partitions;
        c.group_initial_rebalance_delay = Duration::from_millis(k.group_initial_rebalance_delay_ms);
        c.group_session_timeout_min = Duration::from_millis(k.group_min_session_timeout_ms);
        c.group_session_timeout_max = Duration::from_millis(k.group_max_session_timeout_ms);
        c
    }
}

/// What is wrong with the configuration, and where.
#[derive(Debug)]
pub enum ConfigError {
    /// A key of the file: its dotted path, line and column (1-based).
    File {
        path: PathBuf,
        key: String,
        line: usize,
        column: usize,
        message: String,
    },
    /// A command-line flag.
    Flag {
        flag: &'static str,
        message: String,
    },
    /// An environment variable (`KAPPA_TOKEN`).
    Env {
        var: &'static str,
        message: String,
    },
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::File { path, key, line, column, message } => write!(
                f,
                "{}:{line}:{column}: key `{key}` (line {line}, column {column}): {message}",
                path.display()
            ),
            ConfigError::Flag { flag, message } => write!(f, "flag {flag}: {message}"),
            ConfigError::Env { var, message } => {
                write!(f, "environment variable {var}: {message}")
            }
            ConfigError::Read { path, source } => {
                write!(f, "cannot read {}: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// Flags that override the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub http_addr: Option<String>,
    pub kafka_addr: Option<String>,
    pub log_format: Option<LogFormat>,
}

/// Reads, parses and checks a config file (or the embedded default when `path` is `None`).
pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Settings, ConfigError> {
    let (text, file) = match path {
        Some(p) => (
            std::fs::read_to_string(p)
                .map_err(|source| ConfigError::Read { path: p.to_path_buf(), source })?,
            p.to_path_buf(),
        ),
        None => (String::new(), PathBuf::from("<default config>")),
    };
    parse(&text, &file, overrides)
}

/// Parses and checks config text; `file` only names it in errors.
pub fn parse(text: &str, file: &Path, overrides: &Overrides) -> Result<Settings, ConfigError> {
    let spans = Spans::parse(text);
    let at = |key: &[&str], message: String| {
        let span = spans.locate(key);
        let (line, column) = line_column(text, span.start);
        ConfigError::File { path: file.to_path_buf(), key: key.join("."), line, column, message }
    };
    let mut config: Config = toml::from_str(text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        let (line, column) = line_column(text, offset);
        let message = e.message().trim().to_string();
        let mut key = spans.key_at(offset);
        if key.is_empty() {
            // A duplicate key or a syntax error leaves no span tree: name the key from the text.
            key = key_in_text(text, offset, &message);
        }
        // "missing field `x`" is reported on the table that lacks it: name the field too.
        if let Some(field) =
            message.strip_prefix("missing field `").and_then(|r| r.split('`').next())
        {
            key = if key.is_empty() { field.to_string() } else { format!("{key}.{field}") };
        }
        ConfigError::File { path: file.to_path_buf(), key, line, column, message }
    })?;

    if let Some(dir) = &overrides.data_dir {
        config.data_dir = dir.clone();
    }
    if config.data_dir.as_os_str().is_empty() {
        return Err(at(&["data_dir"], "must not be empty".into()));
    }
    let socket = |text: &str| text.parse::<SocketAddr>().map_err(|e| format!("{text:?}: {e}"));
    let http_addr = match &overrides.http_addr {
        Some(flag) => {
            socket(flag).map_err(|message| ConfigError::Flag { flag: "--http-addr", message })?
        }
        None => socket(&config.http.addr).map_err(|m| at(&["http", "addr"], m))?,
    };
    let kafka_addr = match &overrides.kafka_addr {
        Some(flag) => {
            socket(flag).map_err(|message| ConfigError::Flag { flag: "--kafka-addr", message })?
        }
        None => socket(&config.kafka.addr).map_err(|m| at(&["kafka", "addr"], m))?,
    };
    if let Some(a) = &overrides.http_addr {
        config.http.addr = a.clone();
    }
    if let Some(a) = &overrides.kafka_addr {
        config.kafka.addr = a.clone();
    }

    // Engine.
    if config.engine.shards == Some(0) {
        return Err(at(&["engine", "shards"], "must be at least 1".into()));
    }
    if config.engine.cpus.as_ref().is_some_and(Vec::is_empty) {
        return Err(at(&["engine", "cpus"], "must name at least one CPU".into()));
    }
    if config.engine.live_latency_budget_ms == 0 {
        return Err(at(&["engine", "live_latency_budget_ms"], "must be at least 1".into()));
    }
    if let Some(mib) = config.engine.io_memory_mib {
        if mib == 0 || mib > IO_MEMORY_MIB_MAX || mib.checked_mul(1 << 20).is_none() {
            return Err(at(
                &["engine", "io_memory_mib"],
                format!(
                    "must be between 1 and {IO_MEMORY_MIB_MAX} (MiB of pinned memory per shard)"
                ),
            ));
        }
    }
    if config.engine.shutdown_timeout_ms == 0 {
        return Err(at(&["engine", "shutdown_timeout_ms"], "must be at least 1 ms".into()));
    }
    if config.engine.shards.is_some_and(|n| n > SHARDS_MAX) {
        return Err(at(&["engine", "shards"], format!("must be at most {SHARDS_MAX}")));
    }
    if let Some(cpus) = &config.engine.cpus {
        // The shards are pinned to these: each must be one this process may run on (a CPU that
        // does not exist fails the engine's start after the data dir is opened).
        let mut usable: Vec<usize> =
            core_affinity::get_core_ids().unwrap_or_default().into_iter().map(|c| c.id).collect();
        usable.sort_unstable();
        for (i, cpu) in cpus.iter().enumerate() {
            let index = i.to_string();
            let key = ["engine", "cpus", index.as_str()];
            if cpus[..i].contains(cpu) {
                return Err(at(&key, format!("CPU {cpu} is listed twice")));
            }
            if !usable.is_empty() && !usable.contains(cpu) {
                return Err(at(
                    &key,
                    format!("CPU {cpu} is not one this process may run on (usable: {usable:?})"),
                ));
            }
        }
    }

    // HTTP.
    let http = &config.http;
    for (key, value) in [
        ("threads", http.threads),
        ("max_body_bytes", http.max_body_bytes),
        ("max_batch_records", http.max_batch_records),
        ("max_read_records", http.max_read_records),
        ("max_connections", http.max_connections),
    ] {
        if value == 0 {
            return Err(at(&["http", key], "must be at least 1".into()));
        }
    }
    if http.threads > HTTP_THREADS_MAX {
        return Err(at(&["http", "threads"], format!("must be at most {HTTP_THREADS_MAX}")));
    }
    if http.max_in_flight_body_bytes < http.max_body_bytes {
        return Err(at(
            &["http", "max_in_flight_body_bytes"],
            format!("must be at least http.max_body_bytes ({})", http.max_body_bytes),
        ));
    }
    for (key, value) in [
        ("header_timeout_ms", http.header_timeout_ms),
        ("body_timeout_ms", http.body_timeout_ms),
        ("request_timeout_ms", http.request_timeout_ms),
        ("write_timeout_ms", http.write_timeout_ms),
        ("shutdown_timeout_ms", http.shutdown_timeout_ms),
    ] {
        if value == 0 {
            return Err(at(&["http", key], "must be at least 1 ms".into()));
        }
    }
    // Each source of the token is named in its errors: the key, the file's key, or the variable.
    let short = |t: &str| t.len() < 16;
    const SHORT: &str = "must be at least 16 characters";
    let token = match (&http.token, &http.token_file) {
        (Some(_), Some(_)) => {
            return Err(at(&["http", "token_file"], "give token or token_file, not both".into()))
        }
        (Some(t), None) => {
            if short(t) {
                return Err(at(&["http", "token"], SHORT.into()));
            }
            Some(t.clone())
        }
        (None, Some(file)) => {
            let key = ["http", "token_file"];
            let token = read_token_file(file).map_err(|m| at(&key, m))?;
            if short(&token) {
                return Err(at(&key, format!("the token in {} {SHORT}", file.display())));
            }
            Some(token)
        }
        (None, None) => match std::env::var("KAPPA_TOKEN").ok().filter(|t| !t.is_empty()) {
            Some(t) if short(&t) => {
                return Err(ConfigError::Env { var: "KAPPA_TOKEN", message: SHORT.into() })
            }
            t => t,
        },
    };
    if !http_addr.ip().is_loopback() && token.is_none() {
        let message = format!(
            "{http_addr} is not a loopback address: set http.token (or http.token_file, or \
             KAPPA_TOKEN) so that every request must carry `Authorization: Bearer <token>`"
        );
        return Err(match overrides.http_addr {
            Some(_) => ConfigError::Flag { flag: "--http-addr", message },
            None => at(&["http", "addr"], message),
        });
    }

    // Kafka.
    let kafka = &config.kafka;
    for (key, value) in [
        ("default_partitions", kafka.default_partitions as usize),
        ("max_connections", kafka.max_connections),
        ("offsets_topic_partitions", kafka.offsets_topic_partitions.unwrap_or(1) as usize),
        ("buffer_mib_per_shard", kafka.buffer_mib_per_shard),
    ] {
        if value == 0 {
            return Err(at(&["kafka", key], "must be at least 1".into()));
        }
    }
    if kafka.max_request_bytes < 1024 {
        return Err(at(&["kafka", "max_request_bytes"], "must be at least 1024".into()));
    }
    if kafka.max_fetch_bytes < 1024 {
        return Err(at(&["kafka", "max_fetch_bytes"], "must be at least 1024".into()));
    }
    let buffer = kafka.buffer_mib_per_shard << 20;
    if buffer < kafka.max_request_bytes || buffer < kafka.max_fetch_bytes {
        return Err(at(
            &["kafka", "buffer_mib_per_shard"],
            "must hold at least one max_request_bytes request and one max_fetch_bytes response"
                .into(),
        ));
    }
    if kafka.group_min_session_timeout_ms > kafka.group_max_session_timeout_ms {
        return Err(at(
            &["kafka", "group_min_session_timeout_ms"],
            "must not exceed group_max_session_timeout_ms".into(),
        ));
    }
    if kafka.idle_timeout_ms == 0 {
        return Err(at(&["kafka", "idle_timeout_ms"], "must be at least 1 ms".into()));
    }
    if kafka.advertised_host.as_ref().is_some_and(|h| h.trim().is_empty()) {
        return Err(at(&["kafka", "advertised_host"], "must not be empty".into()));
    }
    if kafka.enabled && kafka_addr.ip().is_unspecified() && kafka.advertised_host.is_none() {
        let message = format!(
            "{kafka_addr} listens on every interface: set kafka.advertised_host to the name or \
             address Kafka clients should connect to"
        );
        return Err(match overrides.kafka_addr {
            Some(_) => ConfigError::Flag { flag: "--kafka-addr", message },
            None => at(&["kafka", "addr"], message),
        });
    }

    // Logs.
    if tracing_subscriber::EnvFilter::try_new(&config.log.level).is_err() {
        return Err(at(&["log", "level"], format!("{:?} is not a log filter", config.log.level)));
    }

    // Topics and views.
    let positive = |key: &[&str], value: Option<i64>| match value {
        Some(v) if v <= 0 => Err(at(key, "must be positive".into())),
        _ => Ok(()),
    };
    positive(&["topic_defaults", "retention_ms"], config.topic_defaults.retention_ms)?;
    for (name, topic) in &config.topics {
        if let Err(e) = validate_name(name) {
            return Err(at(&["topics", name], e));
        }
        if topic.partitions == 0 || topic.partitions > PARTITIONS_MAX {
            return Err(at(
                &["topics", name, "partitions"],
                format!("must be between 1 and {PARTITIONS_MAX}"),
            ));
        }
        if topic.retention_bytes == Some(0) {
            return Err(at(&["topics", name, "retention_bytes"], "must be at least 1".into()));
        }
        positive(&["topics", name, "retention_ms"], topic.retention_ms)?;
        if topic.segment_bytes.is_some_and(|s| s < 1 << 20) {
            return Err(at(&["topics", name, "segment_bytes"], "must be at least 1 MiB".into()));
        }
    }
    if config.topic_defaults.retention_bytes == Some(0) {
        return Err(at(&["topic_defaults", "retention_bytes"], "must be at least 1".into()));
    }
    if config.topic_defaults.segment_bytes.is_some_and(|s| s < 1 << 20) {
        return Err(at(&["topic_defaults", "segment_bytes"], "must be at least 1 MiB".into()));
    }
    for (name, spec) in &config.views {
        if let Err(e) = validate_name(name) {
            return Err(at(&["views", name], e));
        }
        if !config.topics.contains_key(&spec.topic) {
            return Err(at(
                &["views", name, "topic"],
                format!("topic {:?} is not declared in [topics]", spec.topic),
            ));
        }
        if let Err(e) = spec.to_def() {
            let mut key = vec!["views", name.as_str()];
            key.extend(e.key.split('.').filter(|k| !k.is_empty()));
            return Err(at(&key, e.message));
        }
    }

    let log_format = overrides.log_format.unwrap_or(config.log.format);
    let default_durability = config.engine.default_durability.into();
    Ok(Settings {
        config,
        http_addr,
        kafka_addr,
        token,
        default_durability,
        log_format,
        file: file.to_path_buf(),
        text: text.to_string(),
    })
}

/// The most pinned DMA memory per shard (64 GiB): more is a typo, and `<< 20` must not wrap.
const IO_MEMORY_MIB_MAX: usize = 64 << 10;
/// Shards and HTTP threads are threads each: a bound that catches typos.
const SHARDS_MAX: usize = 1024;
const HTTP_THREADS_MAX: usize = 1024;
/// The HTTP API's bound on a topic's partitions, for topics of the file too.
const PARTITIONS_MAX: u32 = super::routes::topics::PARTITIONS_MAX;

/// The first line of a token file, which only its owner may read or write (like ssh's keys).
fn read_token_file(file: &Path) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} has mode {mode:04o}: a token file must not be accessible by group or others \
             (chmod 600)",
            file.display()
        ));
    }
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(text.lines().next().unwrap_or("").trim().to_string())
}

/// Topic and view names become directory names: the engine's rule, checked before it starts.
fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 249 || name == "." || name == ".." {
        return Err(format!("name {name:?} must be 1 to 249 characters, not . or .."));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        return Err(format!("name {name:?} may hold only ASCII letters, digits, '.', '_', '-'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
