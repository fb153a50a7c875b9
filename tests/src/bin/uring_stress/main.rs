//! Reproducer of the "stuck completion" (README, ARCHITECTURE): glommio executors doing O_DIRECT
//! writes, reads and fdatasyncs while busy threads load both CPUs and `dd oflag=direct` loads the
//! disk. A monitor thread flags any executor that has I/O outstanding and no completion for
//! `--stall-ms`, dumps its rings' `/proc/self/fdinfo` and the kernel stacks of its thread and its
//! io-wq workers, and says whether the kernel still holds any of its I/O (a slow device) or none
//! (the tasks are stranded inside glommio). `--guard` picks the mitigation under test, so runs
//! compare by stall count and worst stall.
//!
//! Not part of a plain `cargo test` (it loads the machine for minutes). Run it directly:
//!
//! ```sh
//! cargo build --release -p kappa-tests --bin kappa-uring-stress
//! target/release/kappa-uring-stress --dir target/stress --seconds 120 --guard none   # stalls
//! target/release/kappa-uring-stress --dir target/stress --seconds 120 --guard pulse  # none
//! target/release/kappa-uring-stress --modes park-race --cpu-hogs 0 --dd 0 --seconds 30
//! # the reported fingerprint in seconds on an idle machine: a 50 us preempt timer widens the race
//! target/release/kappa-uring-stress --modes sync4k --cpu-hogs 0 --dd 0 --preempt-us 50 --seconds 10
//! ```
//!
//! or through the gated test: `KAPPA_URING_STRESS=1 cargo test --release -p kappa-tests --test
//! it uring_stress -- --nocapture`.
//!
//! Modes: `extend` (1 MiB writes, 8 in flight, each extending a fresh file; fdatasync; close),
//! `prealloc` (the same into a fallocated file), `sync4k` (4 KiB write + fdatasync), `read` (1 MiB
//! reads, 16 in flight), and `park-race`: no I/O, one task that yields in a loop, and a "delay"
//! signal whose handler sleeps `--delay-us` sent to the executor whenever it made progress; a
//! delay that lands between glommio arming its preempt timer and checking it makes the executor
//! park with the task runnable, so this mode shows the race on an idle machine. `--delay-us 0`
//! sends none: with `--preempt-us 20` to `100` the preempt timer itself fires inside the window
//! often enough (below about 5 us glommio hardly runs tasks at all).
//!
//! `idle` does nothing for the whole run (one timer), to price the pulse: compare the executor
//! thread's `cpu_s` with `--guard none` and `--guard pulse`.
//!
//! Guards: `none`; `pulse` (the engine's: `kappa_engine::watchdog` pulse task every
//! `--pulse-ms` plus the watchdog thread that kicks after `--kick-after-ms`); `kick` (the
//! watchdog alone: the pulse beats on every completed I/O, no timer, so only the kick can end a
//! stall); `wake` (a cross-thread wake through glommio's eventfd after `--kick-after-ms`, a
//! diagnostic: if it ends a stall, the executor was asleep in user space's view, not waiting on
//! the kernel).

#![allow(clippy::disallowed_methods)] // a measuring binary: it reads the clock directly

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use kappa_engine::watchdog::{Pulse, Watchdog};
use kappa_engine::WatchdogConfig;

mod procfs;
mod workload;

use procfs::{dump, io_uring_fds, kernel_io_in_flight, thread_cpu_seconds};
use workload::{run_executor, KINDS};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Extend,
    Prealloc,
    Sync4k,
    Read,
    ParkRace,
    Idle,
}

impl Mode {
    fn parse(s: &str) -> anyhow::Result<Mode> {
        Ok(match s {
            "extend" => Mode::Extend,
            "prealloc" => Mode::Prealloc,
            "sync4k" => Mode::Sync4k,
            "read" => Mode::Read,
            "park-race" => Mode::ParkRace,
            "idle" => Mode::Idle,
            other => anyhow::bail!(
                "unknown mode {other} (extend, prealloc, sync4k, read, park-race, idle)"
            ),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Guard {
    None,
    Pulse,
    Kick,
    Wake,
}

struct Options {
    dir: PathBuf,
    seconds: u64,
    modes: Vec<Mode>,
    cpu_hogs: usize,
    dd: usize,
    stall_ms: u64,
    guard: Guard,
    kick_after_ms: u64,
    pulse_ms: u64,
    file_mib: usize,
    preempt_us: u64,
    delay_us: u64,
}

const USAGE: &str = "kappa-uring-stress [--dir D] [--seconds N] \
    [--modes extend,prealloc,sync4k,read,park-race] [--cpu-hogs N] [--dd N] [--stall-ms MS] \
    [--guard none|pulse|kick|wake] [--kick-after-ms MS] [--pulse-ms MS] [--file-mib N] \
    [--preempt-us US] [--delay-us US]";

fn parse_options() -> anyhow::Result<Options> {
    let mut o = Options {
        dir: PathBuf::from("uring-stress"),
        seconds: 60,
        modes: vec![Mode::Extend, Mode::Sync4k, Mode::Prealloc, Mode::Read],
        cpu_hogs: 2,
        dd: 2,
        stall_ms: 1000,
        guard: Guard::None,
        kick_after_ms: 200,
        pulse_ms: 5,
        file_mib: 64,
        preempt_us: 1000,
        delay_us: 3000,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--dir" => o.dir = PathBuf::from(value()?),
            "--seconds" => o.seconds = value()?.parse()?,
            "--modes" => {
                o.modes = value()?.split(',').map(Mode::parse).collect::<anyhow::Result<_>>()?
            }
            "--cpu-hogs" => o.cpu_hogs = value()?.parse()?,
            "--dd" => o.dd = value()?.parse()?,
            "--stall-ms" => o.stall_ms = value()?.parse()?,
            "--guard" => {
                o.guard = match value()?.as_str() {
                    "none" => Guard::None,
                    "pulse" => Guard::Pulse,
                    "kick" => Guard::Kick,
                    "wake" => Guard::Wake,
                    other => anyhow::bail!("--guard {other}: none, pulse, kick or wake"),
                }
            }
            "--kick-after-ms" => o.kick_after_ms = value()?.parse()?,
            "--pulse-ms" => o.pulse_ms = value()?.parse()?,
            "--file-mib" => o.file_mib = value()?.parse()?,
            "--preempt-us" => o.preempt_us = value()?.parse()?,
            "--delay-us" => o.delay_us = value()?.parse()?,
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown flag {other}\n{USAGE}"),
        }
    }
    anyhow::ensure!(!o.modes.is_empty(), "--modes is empty");
    anyhow::ensure!(o.file_mib > 0, "--file-mib must be positive");
    Ok(o)
}

/// What one executor publishes for the monitor.
struct Progress {
    name: String,
    mode: Mode,
    tid: AtomicI64,
    /// I/Os (or yields) completed so far.
    done: AtomicU64,
    /// Submitted and not yet completed.
    outstanding: AtomicI64,
    /// Outstanding by kind (`KINDS`), to name what a stall waits for.
    by_kind: [AtomicI64; KINDS.len()],
    /// The watchdog's view of this executor.
    pulse: Arc<Pulse>,
    /// Beat the pulse on every completion (`--guard kick`).
    beat_on_completion: bool,
    /// A message here wakes the executor through glommio's eventfd (`--guard wake`).
    wake: flume::Sender<()>,
}

impl Progress {
    fn start(&self, kind: usize) {
        self.outstanding.fetch_add(1, Ordering::SeqCst);
        self.by_kind[kind].fetch_add(1, Ordering::SeqCst);
    }

    fn end(&self, kind: usize) {
        self.by_kind[kind].fetch_sub(1, Ordering::SeqCst);
        self.outstanding.fetch_sub(1, Ordering::SeqCst);
        self.done.fetch_add(1, Ordering::SeqCst);
        if self.beat_on_completion {
            self.pulse.beat();
        }
    }

    fn outstanding_kinds(&self) -> String {
        let kinds: Vec<String> = KINDS
            .iter()
            .zip(&self.by_kind)
            .filter_map(|(k, n)| {
                let n = n.load(Ordering::SeqCst);
                (n != 0).then(|| format!("{k}={n}"))
            })
            .collect();
        kinds.join(",")
    }
}

fn gettid() -> i64 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) }
}

/// The delay signal of `park-race`: its handler sleeps, as if the thread lost its CPU.
fn delay_signal() -> libc::c_int {
    libc::SIGRTMIN() + 8
}

static DELAY_NS: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_delay(_: libc::c_int) {
    let ns = DELAY_NS.load(Ordering::Relaxed);
    let ts =
        libc::timespec { tv_sec: (ns / 1_000_000_000) as _, tv_nsec: (ns % 1_000_000_000) as _ };
    // SAFETY: nanosleep is async-signal-safe; `ts` lives on this frame.
    unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) };
}

fn install_delay_handler(delay: Duration) -> anyhow::Result<()> {
    DELAY_NS.store(delay.as_nanos() as u64, Ordering::Relaxed);
    // SAFETY: a zeroed sigaction is valid; the handler only sleeps. SA_RESTART keeps the delay
    // from ending any wait early: the delay must not act as a kick.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_delay as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::sigemptyset(&mut action.sa_mask);
        action.sa_flags = libc::SA_RESTART;
        anyhow::ensure!(
            libc::sigaction(delay_signal(), &action, std::ptr::null_mut()) == 0,
            "sigaction: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

fn signal_thread(tid: i64, signal: libc::c_int) {
    // SAFETY: tgkill on a thread of this process.
    unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, signal) };
}

fn main() -> anyhow::Result<()> {
    let o = parse_options()?;
    // The watchdog's warnings (stalls, with where the thread slept, and kicks) go to stderr.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(false)
        .init();
    std::fs::create_dir_all(&o.dir).with_context(|| format!("creating {}", o.dir.display()))?;
    let stop = Arc::new(AtomicBool::new(false));
    if o.modes.contains(&Mode::ParkRace) {
        install_delay_handler(Duration::from_micros(o.delay_us))?;
    }
    println!(
        "guard={:?} modes={:?} cpu_hogs={} dd={} preempt={} us pulse={} ms kick_after={} ms",
        o.guard, o.modes, o.cpu_hogs, o.dd, o.preempt_us, o.pulse_ms, o.kick_after_ms
    );

    // The watchdog first (as the engine does), then the executors one at a time (so each one's
    // new io_uring fds are known), then the pressure.
    let pulse_interval = Duration::from_millis(o.pulse_ms.max(1));
    let pulses: Vec<Arc<Pulse>> = (0..o.modes.len())
        .map(|i| Pulse::new(format!("ex{i}-{:?}", o.modes[i]).to_lowercase(), pulse_interval))
        .collect();
    let watchdog = match o.guard {
        Guard::Pulse | Guard::Kick => Some(Watchdog::start(
            "stress",
            pulses.clone(),
            WatchdogConfig {
                enabled: true,
                pulse_interval,
                stall_after: Duration::from_millis(o.kick_after_ms),
                kick: true,
            },
        )?),
        Guard::None | Guard::Wake => None,
    };
    let mut executors = Vec::new();
    let mut rings: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for (mode, pulse) in o.modes.iter().copied().zip(pulses) {
        let before = io_uring_fds();
        let (wake, wake_rx) = flume::bounded(16);
        let progress = Arc::new(Progress {
            name: pulse.name().to_string(),
            pulse,
            mode,
            tid: AtomicI64::new(0),
            done: AtomicU64::new(0),
            outstanding: AtomicI64::new(0),
            by_kind: Default::default(),
            beat_on_completion: o.guard == Guard::Kick,
            wake,
        });
        let (ready_tx, ready_rx) = flume::bounded(1);
        let p = progress.clone();
        let dir = o.dir.join(&progress.name);
        let stop_ex = stop.clone();
        let (file_mib, guard) = (o.file_mib, o.guard);
        let idle_for = Duration::from_secs(o.seconds + 3); // alive when the summary reads its CPU time
        let builder = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(16 << 20)
            .preempt_timer(Duration::from_micros(o.preempt_us));
        // The engine's way (`--guard pulse`): watched from before the loop first runs.
        let pulse = (guard == Guard::Pulse).then(|| p.pulse.clone());
        let handle = kappa_engine::watchdog::spawn_executor(
            progress.name.clone(),
            builder,
            pulse,
            move || async move {
                p.tid.store(gettid(), Ordering::SeqCst);
                let _registered = (guard == Guard::Kick).then(|| p.pulse.register_thread());
                let _ = ready_tx.send(());
                glommio::spawn_local(async move { while wake_rx.recv_async().await.is_ok() {} })
                    .detach();
                run_executor(mode, dir, file_mib, idle_for, &p, &stop_ex).await
            },
        )?;
        if ready_rx.recv_timeout(Duration::from_secs(10)).is_err() {
            println!("{}: its first task did not run within 10 s (parked at start)", progress.name);
            println!("RESULT guard={:?} stuck_at_start=1", o.guard);
            std::process::exit(3);
        }
        // The reactor made its rings before the closure ran.
        let new: Vec<i32> = io_uring_fds().into_iter().filter(|fd| !before.contains(fd)).collect();
        rings.insert(progress.name.clone(), new);
        executors.push((progress, handle));
    }
    println!("io_uring fds per executor: {rings:?}");

    let mut hogs = Vec::new();
    for _ in 0..o.cpu_hogs {
        let stop = stop.clone();
        hogs.push(std::thread::spawn(move || {
            let mut x = 1u64;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..100_000 {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                }
                std::hint::black_box(x);
            }
        }));
    }
    let mut dds: Vec<(PathBuf, Option<Child>)> =
        (0..o.dd).map(|i| (o.dir.join(format!("dd-{i}.bin")), None)).collect();

    #[derive(Default)]
    struct Watch {
        last_done: u64,
        since: Option<Instant>,
        dumped: bool,
        wakes: u32,
        /// The `done` count when the last delay signal went out (park-race).
        delayed_at: Option<u64>,
        delays: u64,
        stalls: Vec<(Duration, bool)>,
        stranded: bool,
    }
    let mut watch: Vec<Watch> = executors.iter().map(|_| Watch::default()).collect();
    let stall = Duration::from_millis(o.stall_ms);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(o.seconds);
    let mut last_report = started;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        for (path, child) in dds.iter_mut() {
            let running = child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)));
            if !running {
                *child = Command::new("dd")
                    .args([
                        "if=/dev/zero",
                        &format!("of={}", path.display()),
                        "bs=1M",
                        "count=256",
                        "oflag=direct",
                        "conv=fdatasync",
                    ])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .ok();
            }
        }
        let now = Instant::now();
        for ((p, _), w) in executors.iter().zip(watch.iter_mut()) {
            let done = p.done.load(Ordering::SeqCst);
            let outstanding = p.outstanding.load(Ordering::SeqCst);
            if p.mode == Mode::ParkRace && o.delay_us > 0 && w.delayed_at.is_none_or(|at| done > at)
            {
                // Only after progress: once parked by a delay, no further signal may wake it.
                w.delayed_at = Some(done);
                w.delays += 1;
                signal_thread(p.tid.load(Ordering::SeqCst), delay_signal());
            }
            if done != w.last_done || outstanding <= 0 {
                if let Some(since) = w.since.take() {
                    let stalled = now - since;
                    if stalled >= stall {
                        println!(
                            "[{:7.1}s] {}: resumed after {:.2} s",
                            (now - started).as_secs_f64(),
                            p.name,
                            stalled.as_secs_f64(),
                        );
                        w.stalls.push((stalled, w.stranded));
                    }
                }
                w.last_done = done;
                w.dumped = false;
                w.wakes = 0;
                continue;
            }
            let since = *w.since.get_or_insert(now);
            let stalled = now - since;
            if stalled >= stall && !w.dumped {
                w.dumped = true;
                let in_kernel = kernel_io_in_flight(&rings[&p.name]);
                w.stranded = in_kernel == 0;
                println!(
                    "[{:7.1}s] {}: STALL {} outstanding ({}), no completion for {:.1} s; {}",
                    (now - started).as_secs_f64(),
                    p.name,
                    outstanding,
                    p.outstanding_kinds(),
                    stalled.as_secs_f64(),
                    if w.stranded {
                        "the kernel holds none of its I/O: tasks stranded in glommio".to_string()
                    } else {
                        format!("{in_kernel} of its requests are in the kernel")
                    }
                );
                dump(p.tid.load(Ordering::SeqCst), &rings[&p.name]);
            }
            if o.guard == Guard::Wake
                && stalled >= Duration::from_millis(o.kick_after_ms) * (w.wakes + 1)
            {
                w.wakes += 1;
                let _ = p.wake.try_send(());
            }
        }
        if now - last_report >= Duration::from_secs(10) {
            last_report = now;
            let line: Vec<String> = executors
                .iter()
                .map(|(p, _)| format!("{}={}", p.name, p.done.load(Ordering::SeqCst)))
                .collect();
            println!("[{:7.1}s] done: {}", (now - started).as_secs_f64(), line.join(" "));
        }
    }
    stop.store(true, Ordering::SeqCst);
    let now = Instant::now();
    let (mut total, mut stranded, mut kicks, mut worst, mut stuck_at_end) =
        (0, 0, 0, Duration::ZERO, 0);
    for ((p, _), w) in executors.iter().zip(watch.iter_mut()) {
        if let Some(since) = w.since {
            if now - since >= stall {
                w.stalls.push((now - since, w.stranded));
                stuck_at_end += 1;
            }
        }
        let worst_here = w.stalls.iter().map(|s| s.0).max().unwrap_or_default();
        let stranded_here = w.stalls.iter().filter(|s| s.1).count();
        println!(
            "{}: {} done, {} stalls >= {} ms ({} stranded in glommio), worst {:.2} s; \
             watchdog: {} stalls, {} kicks, longest {} ms; thread cpu_s={:.2}{}",
            p.name,
            p.done.load(Ordering::SeqCst),
            w.stalls.len(),
            o.stall_ms,
            stranded_here,
            worst_here.as_secs_f64(),
            p.pulse.stalls(),
            p.pulse.kicks(),
            p.pulse.longest_stall().as_millis(),
            thread_cpu_seconds(p.tid.load(Ordering::SeqCst)),
            if p.mode == Mode::ParkRace {
                format!("; {} delay signals", w.delays)
            } else {
                String::new()
            }
        );
        total += w.stalls.len();
        stranded += stranded_here;
        kicks += p.pulse.kicks();
        worst = worst.max(worst_here);
    }
    println!(
        "RESULT guard={:?} seconds={} stalls={} stranded={} worst_s={:.2} kicks={} stuck_at_end={}",
        o.guard,
        o.seconds,
        total,
        stranded,
        worst.as_secs_f64(),
        kicks,
        stuck_at_end
    );
    for (_, child) in dds.iter_mut() {
        if let Some(c) = child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    for (path, _) in &dds {
        let _ = std::fs::remove_file(path);
    }
    for h in hogs {
        let _ = h.join();
    }
    // Executors stuck in the kernel would never join: a stuck run ends here.
    if stuck_at_end > 0 {
        std::process::exit(3);
    }
    // Each executor checks `stop` between rounds; a wake makes sure a parked one looks.
    for (p, handle) in executors {
        let _ = p.wake.try_send(());
        match handle.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => println!("{}: {e:#}", p.name),
            Err(e) => println!("{}: {e}", p.name),
        }
    }
    drop(watchdog);
    let _ = std::fs::remove_dir_all(&o.dir);
    Ok(())
}
