//! The reproducer's workloads, one per executor: O_DIRECT writes into fresh or preallocated files,
//! 4 KiB writes each followed by an fdatasync, reads, a yield loop (`park-race`) and nothing
//! (`idle`). Every I/O is counted in the executor's `Progress` around its await.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use glommio::io::DmaFile;

use crate::{Mode, Progress};

const MIB: usize = 1 << 20;

pub const KINDS: [&str; 8] =
    ["open", "fallocate", "write", "fdatasync", "close", "read", "write-1m", "yield"];
pub const OPEN: usize = 0;
pub const FALLOCATE: usize = 1;
pub const WRITE: usize = 2;
pub const FDATASYNC: usize = 3;
pub const CLOSE: usize = 4;
pub const READ: usize = 5;
pub const WRITE_1M: usize = 6;
pub const YIELD: usize = 7;

fn io(e: glommio::GlommioError<()>) -> std::io::Error {
    e.into()
}

/// Counts one I/O of `kind` around `fut`.
async fn counted<T>(p: &Progress, kind: usize, fut: impl std::future::Future<Output = T>) -> T {
    p.start(kind);
    let out = fut.await;
    p.end(kind);
    out
}

pub async fn run_executor(
    mode: Mode,
    dir: PathBuf,
    file_mib: usize,
    idle_for: Duration,
    p: &Arc<Progress>,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    if mode == Mode::Idle {
        // One timer for the whole run: unguarded, the executor sleeps until it fires; guarded,
        // the pulse wakes it every interval (what `cpu_s` in the summary prices).
        glommio::timer::sleep(idle_for).await;
        return Ok(());
    }
    if mode == Mode::ParkRace {
        while !stop.load(Ordering::SeqCst) {
            counted(p, YIELD, futures_lite::future::yield_now()).await;
        }
        return Ok(());
    }
    std::fs::create_dir_all(&dir)?;
    kappa_storage::io::prime_iopoll(&dir).await?;
    let path = dir.join("data.bin");
    if mode == Mode::Read {
        write_file(p, &path, file_mib, false).await?;
    }
    while !stop.load(Ordering::SeqCst) {
        match mode {
            Mode::Extend => write_file(p, &path, file_mib, false).await?,
            Mode::Prealloc => write_file(p, &path, file_mib, true).await?,
            Mode::Sync4k => sync_4k(p, &path, 256).await?,
            Mode::Read => read_file(p, &path, file_mib).await?,
            Mode::ParkRace | Mode::Idle => {}
        }
    }
    Ok(())
}

async fn write_file(
    p: &Arc<Progress>,
    path: &Path,
    mib: usize,
    prealloc: bool,
) -> anyhow::Result<()> {
    // glommio's remove runs on its blocking pool: an unlink of a big file waits on the journal,
    // which would block this executor thread (and the watchdog would rightly call it a stall).
    let _ = glommio::io::remove(path).await;
    let file = Rc::new(counted(p, OPEN, kappa_storage::io::open_rw(path)).await?);
    if prealloc {
        counted(p, FALLOCATE, file.pre_allocate((mib * MIB) as u64, false)).await.map_err(io)?;
    }
    let mut in_flight = std::collections::VecDeque::new();
    for i in 0..mib {
        let mut buf = file.alloc_dma_buffer(MIB);
        buf.as_bytes_mut().fill(i as u8 | 1);
        let (f, p2) = (file.clone(), p.clone());
        p.start(WRITE_1M);
        in_flight.push_back(glommio::spawn_local(async move {
            let r = f.write_at(buf, (i * MIB) as u64).await;
            p2.end(WRITE_1M);
            r
        }));
        if in_flight.len() >= 8 {
            if let Some(t) = in_flight.pop_front() {
                t.await.map_err(io)?;
            }
        }
    }
    while let Some(t) = in_flight.pop_front() {
        t.await.map_err(io)?;
    }
    counted(p, FDATASYNC, file.fdatasync()).await.map_err(io)?;
    if let Ok(file) = Rc::try_unwrap(file) {
        counted(p, CLOSE, file.close()).await.map_err(io)?;
    }
    Ok(())
}

async fn sync_4k(p: &Arc<Progress>, path: &Path, rounds: usize) -> anyhow::Result<()> {
    let _ = glommio::io::remove(path).await;
    let file = counted(p, OPEN, kappa_storage::io::open_rw(path)).await?;
    for i in 0..rounds {
        let mut buf = file.alloc_dma_buffer(4096);
        buf.as_bytes_mut().fill(i as u8 | 1);
        counted(p, WRITE, file.write_at(buf, (i * 4096) as u64)).await.map_err(io)?;
        counted(p, FDATASYNC, file.fdatasync()).await.map_err(io)?;
    }
    counted(p, CLOSE, file.close()).await.map_err(io)?;
    Ok(())
}

async fn read_file(p: &Arc<Progress>, path: &Path, mib: usize) -> anyhow::Result<()> {
    let file = Rc::new(counted(p, OPEN, DmaFile::open(path)).await.map_err(io)?);
    let mut in_flight = std::collections::VecDeque::new();
    for i in 0..mib {
        let (f, p2) = (file.clone(), p.clone());
        p.start(READ);
        in_flight.push_back(glommio::spawn_local(async move {
            let r = f.read_at_aligned((i * MIB) as u64, MIB).await.map(|b| b.len());
            p2.end(READ);
            r
        }));
        if in_flight.len() >= 16 {
            if let Some(t) = in_flight.pop_front() {
                t.await.map_err(io)?;
            }
        }
    }
    while let Some(t) = in_flight.pop_front() {
        t.await.map_err(io)?;
    }
    if let Ok(file) = Rc::try_unwrap(file) {
        counted(p, CLOSE, file.close()).await.map_err(io)?;
    }
    Ok(())
}
