//! `kappa serve`: the engine as a Linux appliance process, with its HTTP API.
//!
//! Start-up: read and check the config (any error: exit 2, data dir untouched), bind the HTTP
//! listener, start the engine (shards pinned to their CPUs), create or resume the config's topics
//! and views and every view created over HTTP, start the Kafka listener on the shards, then
//! serve. The HTTP API runs on a small tokio runtime outside the shards (its threads pinned to the
//! CPUs the shards leave free), bridged to the engine's embedded API; the Kafka wire protocol is
//! served by the shards themselves (`kappa_engine::kafka`). It prints where it listens and tells
//! systemd when it is ready.
//!
//! Shutdown (SIGTERM or SIGINT): `/ready` turns 503, the listeners close, in-flight HTTP requests
//! get `http.shutdown_timeout_ms` to finish (streams and long polls end at once), Kafka
//! connections are closed (clients retry elsewhere or reconnect), then the engine shuts down
//! (flush, sync, view checkpoints) and the process exits 0. A second signal exits at once: every
//! acknowledged record is already written (or synced, as asked).

pub mod app;
pub mod config;
pub mod error;
pub mod metrics;
pub mod routes;
pub mod server;
pub mod spec;
pub mod store;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::watch;

use app::{App, StartError};
use config::{LogFormat, Overrides, Settings};

/// Exit code when the configuration is wrong (nothing was started).
pub const EXIT_CONFIG: i32 = 2;
/// Exit code when the appliance failed while starting or running.
pub const EXIT_FAILURE: i32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormatArg {
    Text,
    Json,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// The config file (TOML); without it, the embedded default (data in ./kappa-data, loopback).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Check the config file and exit: 0 when valid, 2 (with key, line and column) when not.
    #[arg(long)]
    pub check_config: bool,
    /// Overrides `data_dir`.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Overrides `http.addr` (port 0 picks a free port; the address is printed).
    #[arg(long)]
    pub http_addr: Option<String>,
    /// Overrides `kafka.addr` (port 0 picks a free port; the address is printed).
    #[arg(long)]
    pub kafka_addr: Option<String>,
    /// Log lines on stderr as text or JSON (overrides `log.format`).
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormatArg>,
}

/// Runs the appliance until a signal; returns the exit code.
pub fn run(args: &ServeArgs) -> anyhow::Result<i32> {
    let overrides = Overrides {
        data_dir: args.data_dir.clone(),
        http_addr: args.http_addr.clone(),
        kafka_addr: args.kafka_addr.clone(),
        log_format: args.log_format.map(|f| match f {
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        }),
    };
    let settings = match config::load(args.config.as_deref(), &overrides) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(EXIT_CONFIG);
        }
    };
    if args.check_config {
        println!(
            "config OK: data in {}, HTTP on {}, Kafka {}, {} topic(s), {} view(s)",
            settings.config.data_dir.display(),
            settings.http_addr,
            if settings.config.kafka.enabled {
                format!("on {}", settings.kafka_addr)
            } else {
                "off".to_string()
            },
            settings.config.topics.len(),
            settings.config.views.len()
        );
        return Ok(0);
    }
    init_logging(&settings);
    match serve(settings) {
        Ok(code) => Ok(code),
        Err(StartError::Config(e)) => {
            eprintln!("error: {e}");
            Ok(EXIT_CONFIG)
        }
        Err(StartError::Other(e)) => {
            tracing::error!(error = format!("{e:#}"), "kappa serve failed");
            eprintln!("error: {e:#}");
            Ok(EXIT_FAILURE)
        }
    }
}

fn init_logging(settings: &Settings) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KAPPA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&settings.config.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match settings.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

fn serve(settings: Settings) -> Result<i32, StartError> {
    let data_dir = &settings.config.data_dir;
    // Through the seam: every directory it creates is made durable by an fsync of its parent.
    kappa_engine::storage::io::Disk::Dma
        .create_dir_all_blocking(data_dir)
        .with_context(|| format!("creating the data dir {}", data_dir.display()))?;
    let data_dir = std::fs::canonicalize(data_dir)
        .with_context(|| format!("resolving the data dir {}", data_dir.display()))?;
    // The shards are pinned to their CPUs and the first `http.reserved_cpus` are left free; the
    // HTTP threads are not pinned, so the kernel runs them there first and spills over only
    // when they need more (pinning two threads to one core halved HTTP ingest in the bench).
    let (engine_config, _free_cpus) = app::engine_config(&settings, data_dir.clone());

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.config.http.threads)
        .max_blocking_threads(app::BLOCKING_THREADS)
        .thread_name("kappa-http")
        .enable_all()
        .build()
        .context("starting the HTTP runtime")?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
    runtime
        .block_on(install_signal_handlers(stop_tx, started.clone()))
        .context("installing signal handlers")?;

    // Bind before starting the engine: a taken port is reported before any data is opened.
    let listener = std::net::TcpListener::bind(settings.http_addr)
        .with_context(|| format!("binding the HTTP listener to {}", settings.http_addr))?;
    listener.set_nonblocking(true).context("configuring the HTTP listener")?;
    let http_addr = listener.local_addr().context("reading the HTTP listener's address")?;

    let engine = kappa_engine::Engine::start(engine_config)
        .context("starting the engine (it needs io_uring and enough locked memory)")?;
    let opened = app::open_topics(&engine, &settings).and_then(|()| {
        let store = store::ViewStore::new(&data_dir, engine.config().log.disk.clone());
        app::open_views(&engine, &settings, &store).map_err(StartError::Other)
    });
    let failed_views = match opened {
        Ok(failed) => failed,
        Err(e) => {
            if let Err(shutdown) = engine.shutdown() {
                tracing::error!(error = %shutdown, "engine shutdown after a failed start");
            }
            return Err(e);
        }
    };

    let limits = server::Limits {
        max_connections: settings.config.http.max_connections,
        header_timeout: Settings::millis(settings.config.http.header_timeout_ms),
        write_timeout: Settings::millis(settings.config.http.write_timeout_ms),
        drain_timeout: Settings::millis(settings.config.http.shutdown_timeout_ms),
    };
    let mut settings = settings;
    settings.http_addr = http_addr; // The bound address (port 0 picks one).
    let kafka_config = settings.config.kafka.enabled.then(|| settings.kafka_config());
    let engine = Arc::new(engine);
    let kafka = match kafka_config {
        None => None,
        Some(config) => match kappa_engine::kafka::KafkaServer::start(&engine, config) {
            Ok(server) => Some(server),
            Err(e) => {
                if let Err(shutdown) = engine.shutdown() {
                    tracing::error!(error = %shutdown, "engine shutdown after a failed start");
                }
                return Err(StartError::Other(anyhow::Error::new(e)));
            }
        },
    };
    if let Some(kafka) = &kafka {
        settings.kafka_addr = kafka.local_addr(); // The bound address (port 0 picks one).
    }
    let app = Arc::new(App::with_engine(engine, settings, data_dir.clone(), stop_rx.clone()));
    *app.failed_views.write().unwrap_or_else(std::sync::PoisonError::into_inner) =
        failed_views.into_iter().map(|f| (f.view.clone(), f)).collect();
    let router = routes::router(app.clone());
    let listener = {
        let _guard = runtime.enter();
        tokio::net::TcpListener::from_std(listener).context("registering the HTTP listener")?
    };
    app.ready.store(true, Ordering::Release);
    started.store(true, Ordering::Release);
    println!("kappa serve: listening on http://{http_addr} (JSON API under /v1, /metrics, status page at /)");
    match &kafka {
        Some(kafka) => println!(
            "kappa serve: Kafka listening on {} (clients: bootstrap.servers={}:{})",
            kafka.local_addr(),
            app.settings
                .config
                .kafka
                .advertised_host
                .clone()
                .unwrap_or_else(|| kafka.local_addr().ip().to_string()),
            app.settings.config.kafka.advertised_port.unwrap_or(kafka.local_addr().port()),
        ),
        None => println!("kappa serve: Kafka listener off (kafka.enabled = false)"),
    }
    println!("kappa serve: data in {}, {} shard(s)", data_dir.display(), app.engine.shard_count());
    tracing::info!(http = %http_addr, data_dir = %data_dir.display(), shards = app.engine.shard_count(), "kappa serve ready");
    notify_systemd(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status("serving")]);

    let drained = runtime.block_on(server::serve(
        listener,
        router,
        limits,
        stop_rx,
        app.open_connections.clone(),
    ));
    app.ready.store(false, Ordering::Release);
    notify_systemd(&[sd_notify::NotifyState::Stopping]);
    if let Some(kafka) = kafka {
        kafka.stop();
    }
    tracing::info!(
        drained,
        "HTTP and Kafka stopped; shutting the engine down (flush, sync, checkpoints)"
    );
    // Bounded: a shard that does not answer (stuck in the kernel, or dead) must not keep the
    // process alive. Every acknowledged record is already written or synced as its client
    // asked, so exiting without the engine's flush loses nothing acknowledged; views resume
    // from their last checkpoints. (Naming the shard that did not answer needs the engine's
    // dead-shard reporting.)
    let limit = Settings::millis(app.settings.config.engine.shutdown_timeout_ms);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let shutting = app.clone();
    let spawned = std::thread::Builder::new().name("kappa-shutdown".into()).spawn(move || {
        let _ = done_tx.send(shutting.engine.shutdown());
    });
    let result = match spawned {
        Ok(_) => done_rx.recv_timeout(limit),
        Err(e) => Ok(Err(kappa_engine::Error::Io {
            op: "spawn",
            path: PathBuf::from("kappa-shutdown"),
            source: e,
        })),
    };
    match result {
        Ok(result) => {
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            match result {
                Ok(()) => {
                    tracing::info!("kappa serve stopped cleanly");
                    println!("kappa serve: stopped");
                    Ok(0)
                }
                Err(e) => Err(StartError::Other(anyhow::Error::new(e).context("engine shutdown"))),
            }
        }
        Err(_) => {
            runtime.shutdown_background();
            // The engine's threads may never finish: dropping it would wait for them.
            std::mem::forget(app);
            Err(StartError::Other(anyhow::anyhow!(
                "the engine did not shut down within engine.shutdown_timeout_ms ({} ms): a \
                 shard did not answer; exiting without its flush (every acknowledged record \
                 was already written or synced as asked; views resume from their last \
                 checkpoints)",
                limit.as_millis()
            )))
        }
    }
}

/// SIGTERM or SIGINT starts a clean shutdown; a second one exits at once. One that comes while
/// the appliance is still starting (`started` false) exits at once too: nothing has been
/// acknowledged yet, and a start that hangs (a shard that died) must not make it unstoppable.
async fn install_signal_handlers(
    stop: watch::Sender<bool>,
    started: Arc<std::sync::atomic::AtomicBool>,
) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        let (first, code) = tokio::select! {
            _ = term.recv() => ("SIGTERM", 128 + libc_signal::TERM),
            _ = int.recv() => ("SIGINT", 128 + libc_signal::INT),
        };
        if !started.load(Ordering::Acquire) {
            tracing::warn!(signal = first, "signal while starting: exiting now");
            eprintln!("kappa serve: {first} while starting, exiting at once");
            std::process::exit(code);
        }
        tracing::info!(
            signal = first,
            "shutting down: draining requests (a second signal exits at once)"
        );
        let _ = stop.send(true);
        let (second, code) = tokio::select! {
            _ = term.recv() => ("SIGTERM", 128 + libc_signal::TERM),
            _ = int.recv() => ("SIGINT", 128 + libc_signal::INT),
        };
        tracing::warn!(signal = second, "second signal: exiting now");
        eprintln!("kappa serve: {second} again, exiting at once");
        std::process::exit(code);
    });
    Ok(())
}

/// Signal numbers for exit codes (128 + signal, as shells report them).
mod libc_signal {
    pub const INT: i32 = 2;
    pub const TERM: i32 = 15;
}

fn notify_systemd(states: &[sd_notify::NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        if let Err(e) = sd_notify::notify(false, states) {
            tracing::warn!(error = %e, "telling systemd our state failed");
        }
    }
}

/// The HTTP API over an engine this process already runs, on a background thread: what
/// `kappa serve` runs, without its signals and start-up. The `http` benchmark uses it to measure
/// ingest through HTTP beside the embedded API on the same engine.
pub struct Background {
    pub addr: std::net::SocketAddr,
    app: Arc<App>,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Background {
    /// Serves `engine` with `settings` (its HTTP section; `http_addr` port 0 picks one).
    pub fn start(
        engine: kappa_engine::Engine,
        mut settings: Settings,
    ) -> anyhow::Result<Background> {
        let listener = std::net::TcpListener::bind(settings.http_addr)
            .with_context(|| format!("binding {}", settings.http_addr))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        settings.http_addr = addr;
        let limits = server::Limits {
            max_connections: settings.config.http.max_connections,
            header_timeout: Settings::millis(settings.config.http.header_timeout_ms),
            write_timeout: Settings::millis(settings.config.http.write_timeout_ms),
            drain_timeout: Settings::millis(settings.config.http.shutdown_timeout_ms),
        };
        let threads = settings.config.http.threads;
        let (stop, stop_rx) = watch::channel(false);
        let data_dir = engine.config().data_dir.clone();
        let app = Arc::new(App::new(engine, settings, data_dir, stop_rx.clone()));
        app.ready.store(true, Ordering::Release);
        let router = routes::router(app.clone());
        let connections = app.open_connections.clone();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("kappa-http")
            .enable_all()
            .build()
            .context("starting the HTTP runtime")?;
        let thread =
            std::thread::Builder::new().name("kappa-http-main".into()).spawn(move || {
                runtime.block_on(async move {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => {
                            server::serve(listener, router, limits, stop_rx, connections).await;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "registering the HTTP listener failed")
                        }
                    }
                });
            })?;
        Ok(Background { addr, app, stop, thread: Some(thread) })
    }

    pub fn engine(&self) -> &kappa_engine::Engine {
        &self.app.engine
    }

    /// Drains HTTP, then shuts the engine down.
    pub fn stop(mut self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            thread.join().map_err(|_| anyhow::anyhow!("the HTTP thread panicked"))?;
        }
        self.app.engine.shutdown()?;
        Ok(())
    }
}
