//! The device's limit: raw sequential O_DIRECT write and read through the same glommio DMA API the
//! log uses, over a small sweep of I/O sizes and queue depths, so the limit is the best the device
//! does and not one arbitrary shape of it.
//!
//! The sweep always includes the log's own settings (`LogConfig::default()`: write buffer size x
//! writes in flight, read buffer size x reads ahead), so a ratio below 1 can never come from the
//! engine using a shape the limit did not try. Writes are tried both into a fresh file (each write
//! extends it, as the log's segments do today) and into a preallocated one.
//!
//! Timing, the same on both sides of every ratio. A write run has two timings from the same run:
//! from its first submission to its last completed write (`RawWrite::mb_s`), and to the completed
//! fdatasync and close after it (`RawWrite::with_fdatasync_mb_s`). On the virtio disk of the
//! development machines the first measures the host's write cache, not the device: 1 GiB wrote at
//! about 1,000 MB/s to its last write and its final fdatasync then took another 1.5 s (420 MB/s
//! through the sync), and 4 GiB the same (no drop as the host cache filled). So the `storage` and
//! `ingest` limits are the best shape timed through the fdatasync and close
//! (`Sweep::best_write_synced`), against appends timed through the log's close; the other timing
//! is reported beside it. A read run is timed from its first submission to its last completion,
//! with open and close outside the timer (as a scan is).

use std::collections::VecDeque;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Context;
use glommio::io::DmaFile;
use kappa_storage::{LogConfig, KIB, MIB};
use serde::{Deserialize, Serialize};

/// One way of driving the device: I/O size, I/Os in flight, and (writes) whether the file's blocks
/// are allocated before the timer starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    pub io_bytes: usize,
    pub depth: usize,
    #[serde(default)]
    pub preallocated: bool,
}

impl Shape {
    pub const fn new(io_bytes: usize, depth: usize) -> Shape {
        Shape { io_bytes, depth, preallocated: false }
    }

    pub fn label(&self) -> String {
        let size = if self.io_bytes >= MIB as usize {
            format!("{} MiB", self.io_bytes / MIB as usize)
        } else {
            format!("{} KiB", self.io_bytes / KIB as usize)
        };
        format!("{size} x {}{}", self.depth, if self.preallocated { ", preallocated" } else { "" })
    }
}

/// The log's own write shape: its DMA buffer size and write-behind depth.
pub fn engine_write_shape() -> Shape {
    let c = LogConfig::default();
    Shape::new(c.write_buffer_size_bytes, c.write_in_flight_max)
}

/// The log's own read shape: its read buffer size and read-ahead depth.
pub fn engine_read_shape() -> Shape {
    let c = LogConfig::default();
    Shape::new(c.read_buffer_size_bytes, c.read_ahead_max)
}

/// The shapes to try. Full: 256 KiB, 1 MiB and 4 MiB at 4, 8, 16 and 32 in flight (writes also
/// preallocated), plus the engine's own. Quick: the engine's own and one larger shape.
pub fn shapes(quick: bool) -> (Vec<Shape>, Vec<Shape>) {
    let (sizes, depths): (&[usize], &[usize]) = if quick {
        (&[4 * MIB as usize], &[16])
    } else {
        (&[256 * KIB as usize, MIB as usize, 4 * MIB as usize], &[4, 8, 16, 32])
    };
    let mut reads = vec![engine_read_shape()];
    let mut writes = vec![engine_write_shape()];
    for &size in sizes {
        for &depth in depths {
            let shape = Shape::new(size, depth);
            if !reads.contains(&shape) {
                reads.push(shape);
            }
            for preallocated in if quick { vec![false] } else { vec![false, true] } {
                let shape = Shape { preallocated, ..shape };
                if !writes.contains(&shape) {
                    writes.push(shape);
                }
            }
        }
    }
    (writes, reads)
}

/// Bytes per run and repeats of the sweep: long enough that each shape reaches its steady rate,
/// short enough that a scenario spends seconds, not minutes, on it.
pub fn sweep_plan(quick: bool) -> (u64, usize) {
    if quick {
        (32 * MIB, 1)
    } else {
        (256 * MIB, 2)
    }
}

/// One timed raw write run, with both timings of the same run.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct RawWrite {
    /// To the last completed write: on a virtio disk whose host caches writes, partly the
    /// host's memory, not the device.
    pub mb_s: f64,
    /// To the completed fdatasync and close after the last write: the bytes are on the device.
    /// The limit of the `storage` and `ingest` ratios, which time the engine the same way.
    pub with_fdatasync_mb_s: f64,
}

fn mb_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64().max(1e-9)
}

/// How long one raw run (or a scenario's fdatasync series) may take. A run of 1 GiB takes about
/// a second. On this machine kind a run used to sleep for minutes while other processes loaded
/// the CPUs: glommio parked the executor with its tasks runnable (see `kappa_engine::watchdog`,
/// which `on_executor` now applies). This deadline stays as the last resort: a benchmark must end
/// with an error, never hang CI.
pub const RUN_DEADLINE: Duration = Duration::from_secs(120);

/// `work`, or an error naming `what` when it has not finished within `RUN_DEADLINE`.
pub async fn within<T>(
    what: String,
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let deadline = async {
        glommio::timer::sleep(RUN_DEADLINE).await;
        Err(anyhow::anyhow!("{what} did not finish within {} s", RUN_DEADLINE.as_secs()))
    };
    let started = Instant::now();
    let result = futures_lite::future::or(work, deadline).await;
    // A completion that arrived only because the deadline's timer woke the reactor is a stall
    // too, not a measurement.
    anyhow::ensure!(
        started.elapsed() < RUN_DEADLINE,
        "{what} took {:.0} s: an I/O or the executor was stuck",
        started.elapsed().as_secs_f64()
    );
    result
}

/// Writes `size_bytes` sequentially to a fresh `path` in `shape`; the file is kept for reading.
pub async fn raw_write(path: &Path, size_bytes: u64, shape: Shape) -> anyhow::Result<RawWrite> {
    within(format!("raw write {}", shape.label()), raw_write_run(path, size_bytes, shape)).await
}

/// A new, empty file at `path` (any old one removed), opened for DMA writes.
async fn fresh_file(path: &Path) -> anyhow::Result<Rc<glommio::io::DmaFile>> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
    }
    Ok(Rc::new(kappa_storage::io::open_rw(path).await?))
}

/// One raw write of `shape.io_bytes` at `pos`, in flight as a task (the bytes vary by block).
fn spawn_write(
    file: &Rc<glommio::io::DmaFile>,
    shape: Shape,
    pos: u64,
) -> glommio::Task<glommio::Result<usize, ()>> {
    let mut buf = file.alloc_dma_buffer(shape.io_bytes);
    buf.as_bytes_mut().fill((pos / shape.io_bytes as u64) as u8 | 1);
    let target = file.clone();
    glommio::spawn_local(async move { target.write_at(buf, pos).await })
}

async fn raw_write_run(path: &Path, size_bytes: u64, shape: Shape) -> anyhow::Result<RawWrite> {
    let io = shape.io_bytes as u64;
    anyhow::ensure!(io > 0 && shape.depth > 0, "raw write shape {shape:?} is empty");
    let size_bytes = size_bytes.div_ceil(io) * io;
    let file = fresh_file(path).await?;
    if shape.preallocated {
        file.pre_allocate(size_bytes, false)
            .await
            .map_err(std::io::Error::from)
            .with_context(|| format!("preallocating {}", path.display()))?;
    }
    let start = Instant::now();
    let mut in_flight = VecDeque::with_capacity(shape.depth);
    let mut pos = 0u64;
    while pos < size_bytes {
        in_flight.push_back(spawn_write(&file, shape, pos));
        pos += io;
        if in_flight.len() >= shape.depth {
            let task = in_flight.pop_front().context("no write in flight")?;
            task.await.map_err(std::io::Error::from).context("raw write")?;
        }
    }
    while let Some(task) = in_flight.pop_front() {
        task.await.map_err(std::io::Error::from).context("raw write")?;
    }
    let written = start.elapsed();
    file.fdatasync().await.map_err(std::io::Error::from).context("raw fdatasync")?;
    if let Ok(file) = Rc::try_unwrap(file) {
        file.close().await.map_err(std::io::Error::from).context("close")?;
    }
    let synced = start.elapsed();
    Ok(RawWrite { mb_s: mb_s(size_bytes, written), with_fdatasync_mb_s: mb_s(size_bytes, synced) })
}

/// Writes `size_bytes` to a fresh preallocated `path` in `shape`, syncing as the log must: a
/// background fdatasync whenever half of `unsynced_max` is written and unsynced (none while one
/// runs), and no submission that would leave more than `unsynced_max` unsynced; timed like
/// `raw_write` (both timings). Not a limit: the reference that says how much of an
/// append's distance to the raw limit is the unsynced bound's fdatasyncs on this device.
pub async fn raw_write_synced(
    path: &Path,
    size_bytes: u64,
    shape: Shape,
    unsynced_max: u64,
) -> anyhow::Result<RawWrite> {
    within(
        format!("raw write {} synced as the log", shape.label()),
        raw_write_synced_run(path, size_bytes, shape, unsynced_max),
    )
    .await
}

async fn raw_write_synced_run(
    path: &Path,
    size_bytes: u64,
    shape: Shape,
    unsynced_max: u64,
) -> anyhow::Result<RawWrite> {
    use std::cell::Cell;
    type Sync = Option<glommio::Task<std::io::Result<()>>>;
    let io = shape.io_bytes as u64;
    anyhow::ensure!(io > 0 && shape.depth > 0 && unsynced_max >= 2 * io, "{shape:?} is empty");
    let size_bytes = size_bytes.div_ceil(io) * io;
    let file = fresh_file(path).await?;
    file.pre_allocate(size_bytes, false)
        .await
        .map_err(std::io::Error::from)
        .with_context(|| format!("preallocating {}", path.display()))?;
    // What the last completed fdatasync covered, and whether one runs (set by the sync task).
    let synced = Rc::new(Cell::new(0u64));
    let syncing = Rc::new(Cell::new(false));
    // Starts a background fdatasync of everything written when one is due (the log's rule).
    let start_sync = |sync: &mut Sync, written: u64, force: bool| -> Sync {
        let due = written > synced.get() && (force || written - synced.get() >= unsynced_max / 2);
        if syncing.get() || !due {
            return None;
        }
        syncing.set(true);
        let (target, synced, syncing) = (file.clone(), synced.clone(), syncing.clone());
        let task = glommio::spawn_local(async move {
            let result = target.fdatasync().await.map_err(std::io::Error::from);
            if result.is_ok() {
                synced.set(written);
            }
            syncing.set(false);
            result
        });
        sync.replace(task)
    };
    let mut sync: Sync = None;
    let start = Instant::now();
    let mut in_flight: VecDeque<glommio::Task<glommio::Result<usize, ()>>> =
        VecDeque::with_capacity(shape.depth);
    let (mut pos, mut written) = (0u64, 0u64);
    while pos < size_bytes {
        if let Some(done) = start_sync(&mut sync, written, false) {
            done.await.context("raw fdatasync")?;
        }
        // The bound: complete the writes in flight, then wait for a sync covering them.
        if pos + io > synced.get() + unsynced_max {
            match in_flight.pop_front() {
                Some(task) => {
                    task.await.map_err(std::io::Error::from).context("raw write")?;
                    written += io;
                }
                None => {
                    if let Some(done) = start_sync(&mut sync, written, true) {
                        done.await.context("raw fdatasync")?;
                    }
                    if let Some(task) = sync.take() {
                        task.await.context("raw fdatasync")?;
                    }
                }
            }
            continue;
        }
        in_flight.push_back(spawn_write(&file, shape, pos));
        pos += io;
        if in_flight.len() >= shape.depth {
            let task = in_flight.pop_front().context("no write in flight")?;
            task.await.map_err(std::io::Error::from).context("raw write")?;
            written += io;
        }
    }
    while let Some(task) = in_flight.pop_front() {
        task.await.map_err(std::io::Error::from).context("raw write")?;
    }
    let elapsed = start.elapsed();
    if let Some(task) = sync.take() {
        task.await.context("raw fdatasync")?;
    }
    file.fdatasync().await.map_err(std::io::Error::from).context("raw fdatasync")?;
    if let Ok(file) = Rc::try_unwrap(file) {
        file.close().await.map_err(std::io::Error::from).context("close")?;
    }
    let synced = start.elapsed();
    Ok(RawWrite { mb_s: mb_s(size_bytes, elapsed), with_fdatasync_mb_s: mb_s(size_bytes, synced) })
}

/// Reads `size_bytes` of `path` sequentially in `shape`, touching every 4 KiB page as a consumer
/// would; MB/s.
pub async fn raw_read(path: &Path, size_bytes: u64, shape: Shape) -> anyhow::Result<f64> {
    within(format!("raw read {}", shape.label()), raw_read_run(path, size_bytes, shape)).await
}

async fn raw_read_run(path: &Path, size_bytes: u64, shape: Shape) -> anyhow::Result<f64> {
    let io = shape.io_bytes as u64;
    anyhow::ensure!(io > 0 && shape.depth > 0, "raw read shape {shape:?} is empty");
    let file_len = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?.len();
    let size_bytes = size_bytes.min(file_len) / io * io;
    anyhow::ensure!(size_bytes > 0, "{} is too small to read in {}", path.display(), shape.label());
    let file =
        Rc::new(DmaFile::open(path).await.map_err(std::io::Error::from).context("open raw file")?);
    let start = Instant::now();
    let mut in_flight = VecDeque::with_capacity(shape.depth);
    let mut pos = 0u64;
    let mut total = 0u64;
    let mut touched = 0u64;
    while pos < size_bytes || !in_flight.is_empty() {
        while pos < size_bytes && in_flight.len() < shape.depth {
            let source = file.clone();
            let at = pos;
            in_flight.push_back(glommio::spawn_local(async move {
                source.read_at_aligned(at, shape.io_bytes).await
            }));
            pos += io;
        }
        let task = in_flight.pop_front().context("no read in flight")?;
        let chunk = task.await.map_err(std::io::Error::from).context("raw read")?;
        touched =
            chunk.iter().step_by(4096).fold(touched, |acc, b| acc.wrapping_add(u64::from(*b)));
        total += chunk.len() as u64;
    }
    let elapsed = start.elapsed();
    anyhow::ensure!(total == size_bytes, "raw read returned {total} of {size_bytes} bytes");
    anyhow::ensure!(touched > 0, "raw read saw only zeros");
    drop(in_flight);
    if let Ok(file) = Rc::try_unwrap(file) {
        let _ = file.close().await;
    }
    Ok(mb_s(size_bytes, elapsed))
}

/// One shape's best run in the sweep.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepRow {
    pub shape: Shape,
    pub label: String,
    /// The best of this shape's repeats, MB/s (writes: timed to the last completed write).
    pub mb_s: f64,
    pub runs: Vec<f64>,
    /// Writes only: the best of the same runs timed through the fdatasync and close
    /// (`RawWrite::with_fdatasync_mb_s`); empty for reads.
    #[serde(default)]
    pub synced_mb_s: f64,
    #[serde(default)]
    pub synced_runs: Vec<f64>,
    /// The log uses this shape.
    pub engine_setting: bool,
}

/// The sweep's result: every shape tried, and the best ones, which the paired runs then use.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sweep {
    pub size_bytes_per_run: u64,
    pub repeats: usize,
    pub writes: Vec<SweepRow>,
    pub reads: Vec<SweepRow>,
    /// The best write shape timed to the last completed write.
    pub best_write: Shape,
    /// The best write shape timed through the final fdatasync and close (the `storage` and
    /// `ingest` limits).
    pub best_write_synced: Shape,
    pub best_read: Shape,
}

impl Sweep {
    /// The sweep of these rows: the best shape of each timing ranked by that timing.
    fn of(
        size_bytes_per_run: u64,
        repeats: usize,
        writes: Vec<SweepRow>,
        reads: Vec<SweepRow>,
    ) -> Sweep {
        Sweep {
            size_bytes_per_run,
            repeats,
            best_write: best_shape(&writes, |r| r.mb_s, engine_write_shape()),
            best_write_synced: best_shape(&writes, |r| r.synced_mb_s, engine_write_shape()),
            best_read: best_shape(&reads, |r| r.mb_s, engine_read_shape()),
            writes,
            reads,
        }
    }

    pub fn best_write_mb_s(&self) -> f64 {
        self.writes.iter().map(|r| r.mb_s).fold(0.0, f64::max)
    }
    pub fn best_write_synced_mb_s(&self) -> f64 {
        self.writes.iter().map(|r| r.synced_mb_s).fold(0.0, f64::max)
    }
    pub fn best_read_mb_s(&self) -> f64 {
        self.reads.iter().map(|r| r.mb_s).fold(0.0, f64::max)
    }
}

/// Tries every shape `repeats` times (round robin, so a slow minute of the disk does not land on
/// one shape) with `size_bytes` per run, in `dir`; the best run of each shape ranks it. `read`:
/// also sweep reads (each read shape reads a file written just before).
pub async fn sweep(
    dir: &Path,
    size_bytes: u64,
    quick: bool,
    repeats: usize,
    read: bool,
) -> anyhow::Result<Sweep> {
    kappa_storage::io::prime_iopoll(dir).await?;
    let (write_shapes, read_shapes) = shapes(quick);
    let read_shapes = if read { read_shapes } else { Vec::new() };
    let path = dir.join("sweep.bin");
    // Warm-up: the first run after start pays for allocating the DMA pool and the file system's
    // first extents.
    raw_write(&path, size_bytes.min(64 * MIB), engine_write_shape()).await?;
    let mut write_runs = vec![Vec::new(); write_shapes.len()];
    let mut synced_runs = vec![Vec::new(); write_shapes.len()];
    let mut read_runs = vec![Vec::new(); read_shapes.len()];
    let repeats = repeats.max(1);
    for repeat in 0..repeats {
        // Progress: one line per repeat, each shape's rate as it comes.
        eprint!("  limit sweep {}/{repeats}: write (to last write/through fdatasync)", repeat + 1);
        for (i, shape) in write_shapes.iter().enumerate() {
            let run = raw_write(&path, size_bytes, *shape).await?;
            eprint!(
                " {}={:.0}/{:.0}",
                shape.label().replace(' ', ""),
                run.mb_s,
                run.with_fdatasync_mb_s
            );
            write_runs[i].push(run.mb_s);
            synced_runs[i].push(run.with_fdatasync_mb_s);
        }
        if !read_shapes.is_empty() {
            eprint!("; read");
            raw_write(&path, size_bytes, engine_write_shape()).await?;
        }
        for (i, shape) in read_shapes.iter().enumerate() {
            let mb_s = raw_read(&path, size_bytes, *shape).await?;
            eprint!(" {}={mb_s:.0}", shape.label().replace(' ', ""));
            read_runs[i].push(mb_s);
        }
        eprintln!(" MB/s");
    }
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    let best_of = |runs: &[f64]| runs.iter().copied().fold(0.0, f64::max);
    let rows = |shapes: &[Shape],
                runs: Vec<Vec<f64>>,
                synced: Vec<Vec<f64>>,
                engine: Shape|
     -> Vec<SweepRow> {
        shapes
            .iter()
            .zip(runs)
            .zip(synced.into_iter().chain(std::iter::repeat(Vec::new())))
            .map(|((shape, runs), synced_runs)| SweepRow {
                shape: *shape,
                label: shape.label(),
                mb_s: best_of(&runs),
                runs,
                synced_mb_s: best_of(&synced_runs),
                synced_runs,
                engine_setting: *shape == engine,
            })
            .collect()
    };
    let writes = rows(&write_shapes, write_runs, synced_runs, engine_write_shape());
    let reads = rows(&read_shapes, read_runs, Vec::new(), engine_read_shape());
    let sweep = Sweep::of(size_bytes, repeats, writes, reads);
    let engine_write = sweep.writes.iter().find(|r| r.engine_setting);
    let (engine_write, engine_write_synced) =
        engine_write.map_or((0.0, 0.0), |r| (r.mb_s, r.synced_mb_s));
    let reads = if sweep.reads.is_empty() {
        String::new()
    } else {
        let engine_read = sweep.reads.iter().find(|r| r.engine_setting).map_or(0.0, |r| r.mb_s);
        format!(
            "; best read {} at {:.0} MB/s (engine's {} {engine_read:.0})",
            sweep.best_read.label(),
            sweep.best_read_mb_s(),
            engine_read_shape().label()
        )
    };
    eprintln!(
        "  limit sweep ({} MiB per run): best write {} at {:.0} MB/s to its last write, {} at {:.0} \
         through its fdatasync (engine's {} {engine_write:.0} and {engine_write_synced:.0}){reads}",
        size_bytes / MIB,
        sweep.best_write.label(),
        sweep.best_write_mb_s(),
        sweep.best_write_synced.label(),
        sweep.best_write_synced_mb_s(),
        engine_write_shape().label(),
    );
    Ok(sweep)
}

/// The shape of the row with the highest `rate` (`fallback` when there is none).
fn best_shape(rows: &[SweepRow], rate: fn(&SweepRow) -> f64, fallback: Shape) -> Shape {
    rows.iter().max_by(|a, b| rate(a).total_cmp(&rate(b))).map_or(fallback, |r| r.shape)
}

/// Raw write (and, when `read` names a shape, read-back) runs in `write_shape`, `runs` times, of
/// `size_bytes` each in `dir`, on the calling glommio executor.
pub async fn raw_runs(
    dir: &Path,
    size_bytes: u64,
    runs: usize,
    write_shape: Shape,
    read: Option<Shape>,
) -> anyhow::Result<(Vec<RawWrite>, Vec<f64>)> {
    let raw = dir.join("raw.bin");
    let (mut writes, mut reads) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        writes.push(raw_write(&raw, size_bytes, write_shape).await?);
        if let Some(shape) = read {
            reads.push(raw_read(&raw, size_bytes, shape).await?);
        }
    }
    std::fs::remove_file(&raw).with_context(|| format!("removing {}", raw.display()))?;
    Ok((writes, reads))
}

/// `raw_runs` on a glommio executor of its own (for scenarios whose engine runs on threads).
pub fn raw_runs_blocking(
    dir: &Path,
    size_bytes: u64,
    runs: usize,
    write_shape: Shape,
    read: Option<Shape>,
) -> anyhow::Result<(Vec<RawWrite>, Vec<f64>)> {
    let dir = dir.to_path_buf();
    crate::on_executor("bench-raw", 64 << 20, move || async move {
        kappa_storage::io::prime_iopoll(&dir).await?;
        raw_runs(&dir, size_bytes, runs, write_shape, read).await
    })
}

/// `sweep` on a glommio executor of its own.
pub fn sweep_blocking(
    dir: &Path,
    size_bytes: u64,
    quick: bool,
    repeats: usize,
    read: bool,
) -> anyhow::Result<Sweep> {
    let dir = dir.to_path_buf();
    crate::on_executor("bench-sweep", 64 << 20, move || async move {
        sweep(&dir, size_bytes, quick, repeats, read).await
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_includes_the_engine_settings() {
        for quick in [false, true] {
            let (writes, reads) = shapes(quick);
            assert!(writes.contains(&engine_write_shape()), "quick={quick}");
            assert!(reads.contains(&engine_read_shape()), "quick={quick}");
            assert!(writes.len() > 1 && reads.len() > 1, "a sweep of one shape is no sweep");
            assert!(reads.iter().all(|s| !s.preallocated));
        }
        let (writes, _) = shapes(false);
        assert!(writes.iter().any(|s| s.preallocated));
    }

    #[test]
    fn each_timing_has_its_own_best_shape() {
        // A shape fast to its last write (into the host's cache) but slow through its fdatasync
        // must not be the limit of figures timed through the fdatasync, nor the other way round.
        let row = |io_kib: u64, mb_s: f64, synced_mb_s: f64| SweepRow {
            shape: Shape::new((io_kib * KIB) as usize, 8),
            label: String::new(),
            mb_s,
            runs: vec![mb_s],
            synced_mb_s,
            synced_runs: vec![synced_mb_s],
            engine_setting: false,
        };
        let rows = vec![row(256, 1000.0, 300.0), row(1024, 800.0, 400.0)];
        let sweep = Sweep::of(MIB, 1, rows.clone(), Vec::new());
        assert_eq!(sweep.best_write, rows[0].shape);
        assert_eq!(sweep.best_write_synced, rows[1].shape);
        assert_eq!(sweep.best_write_synced_mb_s(), 400.0);
        assert_eq!(sweep.best_read, engine_read_shape(), "no read rows: the engine's shape");
    }

    #[test]
    fn raw_write_and_read_move_the_bytes() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("raw.bin");
        let (write, read) = crate::on_executor("limit-test", 4 << 20, move || async move {
            kappa_storage::io::prime_iopoll(path.parent().context("parent")?).await?;
            let shape = Shape { io_bytes: 256 * KIB as usize, depth: 3, preallocated: true };
            let write = raw_write(&path, 3 * MIB, shape).await?;
            anyhow::ensure!(std::fs::metadata(&path)?.len() == 3 * MIB, "file size");
            let read = raw_read(&path, 3 * MIB, Shape::new(128 * KIB as usize, 5)).await?;
            anyhow::Ok((write, read))
        })?;
        assert!(write.mb_s > 0.0 && write.with_fdatasync_mb_s > 0.0 && read > 0.0);
        // The fdatasync comes after the last write, so the synced rate is never higher.
        assert!(write.with_fdatasync_mb_s <= write.mb_s);
        Ok(())
    }
}
