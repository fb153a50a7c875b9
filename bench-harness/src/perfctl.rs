//! Profiles only the timed part of a scenario: `perf record --control fifo:CTL -D -1` starts
//! disabled, and the scenario enables it around its clock (`KAPPA_BENCH_PERF_CTL=CTL`).
//!
//! Why: a scenario's setup (creating 4,000 partitions, writing history) can take more CPU than
//! what it measures, and a whole-process profile then shows mostly the setup.

use std::io::Write;
use std::sync::Mutex;

static CTL: Mutex<Option<std::fs::File>> = Mutex::new(None);

/// Enables (`true`) or disables the profiler listening on `KAPPA_BENCH_PERF_CTL`, if any.
///
/// The first call opens the FIFO, which blocks until perf has it open: set the variable only
/// under `perf record --control fifo:CTL`. Without perf's ack FIFO the switch is asynchronous, so
/// the profile's edges are approximate (a few milliseconds of a run of hundreds).
///
/// `KAPPA_BENCH_PERF_SKIP=N` leaves the first N timed parts out (a process's first run faults in
/// every page its allocator will reuse later: a profile of the steady state skips it).
pub fn profiling(on: bool) {
    let Some(path) = std::env::var_os("KAPPA_BENCH_PERF_CTL") else {
        return;
    };
    static STARTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let skip: u64 =
        std::env::var("KAPPA_BENCH_PERF_SKIP").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    if on && STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < skip {
        return;
    }
    let mut ctl = CTL.lock().unwrap_or_else(|e| e.into_inner());
    if ctl.is_none() {
        match std::fs::OpenOptions::new().write(true).open(&path) {
            Ok(file) => *ctl = Some(file),
            Err(e) => {
                eprintln!("KAPPA_BENCH_PERF_CTL: opening {}: {e}", path.to_string_lossy());
                return;
            }
        }
    }
    if let Some(file) = ctl.as_mut() {
        let command: &[u8] = if on { b"enable\n" } else { b"disable\n" };
        if let Err(e) = file.write_all(command) {
            eprintln!("KAPPA_BENCH_PERF_CTL: {e}");
        }
    }
}
