//! The appliance's state shared by HTTP handlers, and its start: engine, topics and views.
//!
//! The engine's embedded API blocks (it waits on flume replies from the shards), so handlers call
//! it through `App::blocking` (tokio's blocking pool) and never stall the HTTP threads; appends
//! use the async producer path directly. Control-plane changes (create, delete, rebuild, serve)
//! are serialized by one lock, so two requests never interleave a view's store and engine steps.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use kappa_engine::{Durability, Engine, EngineConfig, Producer, TopicConfig};
use tokio::sync::watch;

use super::config::{ConfigError, Settings};
use super::error::{ApiError, ApiResult};
use super::metrics::HttpMetrics;
use super::spec::ViewSpec;
use super::store::ViewStore;

pub struct App {
    /// Shared with the Kafka listener, which holds a weak reference for topic creation.
    pub engine: Arc<Engine>,
    pub settings: Settings,
    pub store: ViewStore,
    /// The absolute data dir.
    pub data_dir: PathBuf,
    producers: [Producer; 3],
    /// Serializes control-plane changes.
    pub control: tokio::sync::Mutex<()>,
    /// False until start-up is done, and again once shutdown begins.
    pub ready: AtomicBool,
    /// Turns true when shutdown begins: streams and long polls end.
    pub stop: watch::Receiver<bool>,
    pub http: HttpMetrics,
    pub open_connections: Arc<AtomicI64>,
    /// Reads that may wait for new records at once: each holds a thread of the blocking pool
    /// while it waits, so past this many a read answers at once instead (never starving
    /// queries and control requests of threads).
    pub long_polls: Arc<tokio::sync::Semaphore>,
    /// Request body bytes held at once, in KiB (`http.max_in_flight_body_bytes`).
    pub body_budget: Arc<tokio::sync::Semaphore>,
    pub started: Instant,
    /// Views that could not be opened at start (`open_views`): the rest are served, and these
    /// are reported by `/health`, `/v1/status`, `kappa_view_failed` and a 409 on their routes,
    /// until one is created again.
    pub failed_views: std::sync::RwLock<BTreeMap<String, FailedView>>,
}

/// A view `kappa serve` could not open at start, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FailedView {
    pub view: String,
    /// The engine error's kind (`failure_reason`), stable for scripts and alerts.
    pub reason: &'static str,
    /// The error as text (partition, offsets).
    pub error: String,
}

impl FailedView {
    pub fn new(view: &str, e: &kappa_engine::Error) -> FailedView {
        FailedView { view: view.to_string(), reason: failure_reason(e), error: e.to_string() }
    }
}

/// A stable name for why a view could not be opened (`FailedView::reason`).
pub fn failure_reason(e: &kappa_engine::Error) -> &'static str {
    use kappa_engine::Error as E;
    match e {
        E::ViewBeforeLogStart { .. } => "view_before_log_start",
        E::UnknownTopic { .. } => "unknown_topic",
        E::Config { .. } => "invalid_definition",
        E::Poisoned { .. } | E::PoisonNotPersisted { .. } => "poisoned",
        E::Storage(_) => "storage",
        _ => "error",
    }
}

/// Threads of the blocking pool (engine calls); long polls may hold at most half of them.
pub const BLOCKING_THREADS: usize = 64;

impl App {
    pub fn new(
        engine: Engine,
        settings: Settings,
        data_dir: PathBuf,
        stop: watch::Receiver<bool>,
    ) -> App {
        App::with_engine(Arc::new(engine), settings, data_dir, stop)
    }

    /// `new` over an engine already shared (with the Kafka listener).
    pub fn with_engine(
        engine: Arc<Engine>,
        settings: Settings,
        data_dir: PathBuf,
        stop: watch::Receiver<bool>,
    ) -> App {
        let producers = [Durability::None, Durability::Written, Durability::Synced]
            .map(|d| engine.producer().with_durability(d));
        let budget = super::routes::budget_units(settings.config.http.max_in_flight_body_bytes);
        App {
            store: ViewStore::new(&data_dir, engine.config().log.disk.clone()),
            engine,
            settings,
            data_dir,
            producers,
            control: tokio::sync::Mutex::new(()),
            ready: AtomicBool::new(false),
            stop,
            http: HttpMetrics::new(),
            open_connections: Arc::new(AtomicI64::new(0)),
            long_polls: Arc::new(tokio::sync::Semaphore::new(BLOCKING_THREADS / 2)),
            body_budget: Arc::new(tokio::sync::Semaphore::new(budget as usize)),
            #[allow(clippy::disallowed_methods)] // Uptime for the status page only.
            started: Instant::now(),
            failed_views: std::sync::RwLock::new(BTreeMap::new()),
        }
    }

    pub fn producer(&self, durability: Durability) -> &Producer {
        match durability {
            Durability::None => &self.producers[0],
            Durability::Written => &self.producers[1],
            Durability::Synced => &self.producers[2],
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Runs blocking engine calls on tokio's blocking pool.
    pub async fn blocking<T, F>(self: &Arc<Self>, work: F) -> ApiResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&App) -> ApiResult<T> + Send + 'static,
    {
        let app = self.clone();
        tokio::task::spawn_blocking(move || work(&app))
            .await
            .map_err(|e| ApiError::internal(format!("a request task failed: {e}")))?
    }

    /// The topic definition for a new topic, with the configured defaults filled in.
    pub fn topic_config(
        &self,
        partitions: u32,
        retention_ms: Option<i64>,
        retention_bytes: Option<u64>,
        segment_bytes: Option<u64>,
    ) -> TopicConfig {
        topic_config(&self.settings, partitions, retention_ms, retention_bytes, segment_bytes)
    }

    /// Creates a view (or resumes a stored one of the same definition) and records its spec.
    pub fn create_view(&self, name: &str, spec: &ViewSpec) -> ApiResult<u32> {
        let def = spec.to_def().map_err(|e| ApiError::bad(&e.key, e.message))?;
        let handle = self.engine.create_view(name, def)?;
        let version = handle.version();
        self.store.put(name, version, spec)?;
        self.failed_views.write().unwrap_or_else(std::sync::PoisonError::into_inner).remove(name);
        Ok(version)
    }

    /// Starts a rebuild of a view with a new definition; returns the new version at once.
    ///
    /// Refused (400): a revision that already names another definition of this view (the
    /// engine resumes a view by revision, so after a restart it could resume the wrong one),
    /// and `start_from_version` of a version whose state means something else (another key,
    /// field, aggregate, window, filter or lateness: the new version would continue numbers it
    /// cannot interpret).
    pub fn rebuild_view(&self, name: &str, spec: &ViewSpec) -> ApiResult<u32> {
        let def = spec.to_def().map_err(|e| ApiError::bad(&e.key, e.message))?;
        let stored = self.store.get(name)?.map(|s| s.versions).unwrap_or_default();
        let revision = spec.revision();
        if let Some((v, _)) =
            stored.iter().find(|(_, other)| other.revision() == revision && *other != spec)
        {
            return Err(ApiError::bad(
                "revision",
                format!(
                    "revision {revision:?} already names version {v} of {name:?}, with another \
                     definition: give this definition its own revision"
                ),
            ));
        }
        if let Some(from) = spec.start_from_version {
            let Some(base) = stored.get(&from) else {
                return Err(ApiError::bad(
                    "start_from_version",
                    format!("{name:?} has no version {from} with a stored definition"),
                ));
            };
            if let Some(field) = base.state_differs(spec) {
                return Err(ApiError::bad(
                    "start_from_version",
                    format!(
                        "version {from} has another `{field}`: its state cannot be continued \
                         by this definition (rebuild from the log instead)"
                    ),
                ));
            }
        }
        // Record the spec before the version starts, under the number the engine will use.
        let version = self.engine.rebuild_view(name, def)?.version();
        self.store.put(name, version, spec)?;
        Ok(version)
    }
}

/// A topic definition with the configured defaults filled in.
pub fn topic_config(
    settings: &Settings,
    partitions: u32,
    retention_ms: Option<i64>,
    retention_bytes: Option<u64>,
    segment_bytes: Option<u64>,
) -> TopicConfig {
    let defaults = &settings.config.topic_defaults;
    let mut config = TopicConfig::new(partitions);
    config.retention_ms_max = retention_ms.or(defaults.retention_ms);
    config.retention_bytes_max = retention_bytes.or(defaults.retention_bytes);
    config.segment_size_bytes_max = segment_bytes.or(defaults.segment_bytes);
    config
}

/// The engine configuration, and the CPUs left free for the HTTP threads (empty: they share).
pub fn engine_config(settings: &Settings, data_dir: PathBuf) -> (EngineConfig, Vec<usize>) {
    let engine = &settings.config.engine;
    let mut config = EngineConfig::new(data_dir);
    let mut usable: Vec<usize> =
        core_affinity::get_core_ids().unwrap_or_default().into_iter().map(|c| c.id).collect();
    usable.sort_unstable();
    let reserved = settings.config.http.reserved_cpus;
    let (shard_cpus, http_cpus) = match &engine.cpus {
        Some(cpus) => {
            let rest = usable.iter().copied().filter(|c| !cpus.contains(c)).collect();
            (cpus.clone(), rest)
        }
        // Keep the first CPUs for the network threads, as long as one is left for a shard.
        None if usable.len() > reserved => {
            (usable[reserved..].to_vec(), usable[..reserved].to_vec())
        }
        None => (usable, Vec::new()),
    };
    if !shard_cpus.is_empty() {
        config.cpus = Some(shard_cpus);
    }
    config.shards = engine.shards;
    config.live_latency_budget = Settings::millis(engine.live_latency_budget_ms);
    if let Some(mib) = engine.io_memory_mib {
        // Checked when the config was read (at most 64 GiB): this cannot wrap.
        config.io_memory_bytes = mib.saturating_mul(1 << 20);
    }
    if let Some(ms) = settings.config.debug.append_delay_ms {
        config.append_delay = Some(Settings::millis(ms));
    }
    (config, http_cpus)
}

/// Why start-up failed: the config (exit 2, data untouched beyond opening it) or anything else.
pub enum StartError {
    Config(ConfigError),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for StartError {
    fn from(e: anyhow::Error) -> Self {
        StartError::Other(e)
    }
}

/// Creates the topics of the config file that do not exist; an existing one must agree.
pub fn open_topics(engine: &Engine, settings: &Settings) -> Result<(), StartError> {
    let existing = engine.topics();
    for (name, topic) in &settings.config.topics {
        match existing.get(name) {
            Some(have) if have.partitions != topic.partitions => {
                return Err(StartError::Config(settings.error_at(
                    &["topics", name, "partitions"],
                    format!(
                        "topic {name:?} exists with {} partitions; the partition count of a \
                         topic cannot change",
                        have.partitions
                    ),
                )));
            }
            Some(_) => {}
            None => {
                let config = topic_config(
                    settings,
                    topic.partitions,
                    topic.retention_ms,
                    topic.retention_bytes,
                    topic.segment_bytes,
                );
                engine
                    .create_topic(name, config)
                    .with_context(|| format!("creating topic {name:?} of the config file"))?;
                tracing::info!(topic = %name, partitions = topic.partitions, "topic created");
            }
        }
    }
    Ok(())
}

/// Versions newer than the served one were rebuilds in progress when the process stopped (or
/// caught up and were rolled back from: those are marked in the store and stay stopped, as
/// before a restart they only kept running). A rebuild resumes under its own number from its
/// own checkpoints, and swaps in when it catches up, as it would have.
fn resume_newer(
    engine: &Engine,
    name: &str,
    served: u32,
    specs: &super::store::StoredSpecs,
    stored: Option<&kappa_engine::StoredView>,
) -> Vec<String> {
    let mut resumed_revisions = Vec::new();
    for (&version, spec) in specs.versions.range(served + 1..) {
        if specs.rolled_back.contains(&version) {
            continue;
        }
        if !stored.is_some_and(|s| s.revisions.contains_key(&version)) {
            continue; // Dropped, or never started.
        }
        let resumed = spec.to_def().map_err(|e| e.to_string()).and_then(|def| {
            engine.resume_view_version(name, version, def).map_err(|e| e.to_string())
        });
        match resumed {
            Ok(_) => {
                tracing::info!(view = %name, version, "view rebuild resumed");
                resumed_revisions.push(spec.revision());
            }
            Err(e) => tracing::error!(view = %name, version, error = %e,
                "a view rebuild in progress could not be resumed; it is stopped"),
        }
    }
    resumed_revisions
}

/// Re-creates every stored view at the version it served, then the config file's views: created
/// when new, rebuilt in the background when their definition changed. A view that cannot be
/// opened (say, its replay would start before the log start retention left) does not stop the
/// others: it is returned as failed, with the typed reason, and the appliance reports it.
pub fn open_views(
    engine: &Engine,
    settings: &Settings,
    store: &ViewStore,
) -> anyhow::Result<Vec<FailedView>> {
    let data_dir = &engine.config().data_dir;
    let mut failed = Vec::new();
    // The revisions running per view: the served one first, then resumed rebuilds.
    let mut served: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, specs) in store.list()? {
        let stored = kappa_engine::stored_view(&engine.config().log.disk, data_dir, &name)?;
        let version = stored.as_ref().map(|s| s.served).filter(|v| specs.versions.contains_key(v));
        let Some((version, spec)) = version
            .and_then(|v| specs.versions.get(&v).map(|s| (v, s)))
            .or_else(|| specs.versions.iter().next_back().map(|(v, s)| (*v, s)))
        else {
            continue;
        };
        let def = match spec.to_def() {
            Ok(def) => def,
            Err(e) => {
                tracing::error!(view = %name, version, error = %e, "stored view definition is invalid; not opened");
                continue;
            }
        };
        match engine.create_view(&name, def) {
            Ok(handle) => {
                if handle.version() != version {
                    store.put(&name, handle.version(), spec)?;
                }
                tracing::info!(view = %name, version = handle.version(), "view resumed");
                let mut running = vec![spec.revision()];
                running.extend(resume_newer(
                    engine,
                    &name,
                    handle.version(),
                    &specs,
                    stored.as_ref(),
                ));
                served.insert(name.clone(), running);
            }
            Err(e) => {
                tracing::error!(view = %name, error = %e, "stored view could not be opened; serving the others");
                failed.push(FailedView::new(&name, &e));
            }
        }
    }
    for (name, spec) in &settings.config.views {
        let def = spec.to_def().map_err(|e| anyhow::anyhow!("view {name:?}: {e}"))?;
        match served.get(name) {
            // Served, or a rebuild to it resumed above.
            Some(running) if running.contains(&spec.revision()) => {}
            // The served version keeps serving; the rebuild's failure is logged.
            Some(_) => match engine.rebuild_view(name, def) {
                Ok(rebuild) => {
                    let version = rebuild.version();
                    store.put(name, version, spec)?;
                    tracing::info!(view = %name, version, "view definition changed in the config file; rebuilding");
                }
                Err(e) => tracing::error!(view = %name, error = %e,
                    "the config file's new definition could not be rebuilt; the served version stays"),
            },
            // A stored view that failed above is not tried again under the same definition.
            None if failed.iter().any(|f| f.view == *name) => {}
            None => match engine.create_view(name, def) {
                Ok(handle) => {
                    store.put(name, handle.version(), spec)?;
                    tracing::info!(view = %name, version = handle.version(), "view created");
                }
                Err(e) => {
                    tracing::error!(view = %name, error = %e,
                        "the config file's view could not be created; serving the others");
                    failed.push(FailedView::new(name, &e));
                }
            },
        }
    }
    Ok(failed)
}
