//! A tracefs instance of its own recording ext4's fsync, inode allocation, unlink and truncate
//! tracepoints for one device, and the parser of what it recorded.
//!
//! The instance is private (`instances/<unique>`), so it neither disturbs nor is disturbed by
//! other tracing on the machine, and it is removed when the `Instance` drops, also on a panic.
//! Its clock is `mono`, so event times compare with `CLOCK_MONOTONIC` read by the test. The text
//! output prints microseconds, so comparisons with the test's nanosecond clock are made at
//! microsecond granularity (see `Us`).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const TRACEFS: &str = "/sys/kernel/tracing";
const EVENTS: [&str; 5] = [
    "ext4_sync_file_enter",
    "ext4_sync_file_exit",
    "ext4_allocate_inode",
    "ext4_unlink_enter",
    "ext4_truncate_enter",
];
/// Per CPU. Other work on the same device (builds) shares the filter; the overrun counters are
/// checked, so a buffer too small fails the test instead of losing events silently.
const BUFFER_KB: u32 = 32 * 1024;

/// `CLOCK_MONOTONIC` in nanoseconds (the clock the instance's `mono` trace clock reads).
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A time in the trace's resolution (microseconds of `CLOCK_MONOTONIC`).
pub type Us = u64;

/// A test clock reading in the trace's resolution: an event at the same microsecond counts as
/// either side of it (the comparison cannot tell), which only ever makes a check more lenient.
pub fn us(ns: u64) -> Us {
    ns / 1000
}

/// Fails (never skips) unless the test runs as root with tracefs and ext4's tracepoints.
pub fn preflight() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "this test needs root (tracefs); run it as root, as .ci/run does");
    assert!(
        Path::new(TRACEFS).join("instances").is_dir(),
        "tracefs is not mounted at {TRACEFS} (mount -t tracefs nodev {TRACEFS})"
    );
    for event in EVENTS {
        assert!(
            Path::new(TRACEFS).join("events/ext4").join(event).is_dir(),
            "the kernel has no tracepoint ext4:{event}"
        );
    }
}

pub struct Instance {
    dir: PathBuf,
}

fn write(path: &Path, value: &str) {
    std::fs::write(path, value).unwrap_or_else(|e| {
        panic!(
            "cannot write {value:?} to {} ({e}): this test needs root and tracefs",
            path.display()
        )
    });
}

impl Instance {
    /// Creates the instance and starts recording the ext4 events of the device holding `dir`.
    /// Panics (never skips) without root, without tracefs, or when `dir` is not on ext4.
    pub fn start(dir: &Path) -> Instance {
        preflight();
        assert_eq!(fs_type(dir), EXT4_SUPER_MAGIC, "{} is not on ext4", dir.display());
        let st_dev = std::fs::metadata(dir).expect("stat the data dir").dev();
        // The kernel's dev_t (what the tracepoints record) is major << 20 | minor.
        let kdev = (u64::from(libc::major(st_dev)) << 20) | u64::from(libc::minor(st_dev));
        let name = format!("kappa-fsync-{}-{}", std::process::id(), mono_ns());
        let instance = Instance { dir: Path::new(TRACEFS).join("instances").join(name) };
        std::fs::create_dir(&instance.dir).unwrap_or_else(|e| {
            panic!("cannot create the tracefs instance {} ({e})", instance.dir.display())
        });
        write(&instance.dir.join("tracing_on"), "0");
        write(&instance.dir.join("trace_clock"), "mono");
        write(&instance.dir.join("buffer_size_kb"), &BUFFER_KB.to_string());
        for event in EVENTS {
            let event_dir = instance.dir.join("events/ext4").join(event);
            write(&event_dir.join("filter"), &format!("dev == {kdev}"));
            write(&event_dir.join("enable"), "1");
        }
        write(&instance.dir.join("trace"), "");
        write(&instance.dir.join("tracing_on"), "1");
        instance
    }

    /// Stops recording and parses everything recorded. Panics if the buffer overran.
    pub fn stop(&self) -> Trace {
        write(&self.dir.join("tracing_on"), "0");
        let cpus = std::fs::read_dir(self.dir.join("per_cpu")).expect("per_cpu");
        for cpu in cpus {
            let stats = cpu.expect("per_cpu entry").path().join("stats");
            let text = std::fs::read_to_string(&stats).expect("per-cpu stats");
            for line in text.lines() {
                if let Some(n) = line.strip_prefix("overrun: ") {
                    assert_eq!(
                        n.trim(),
                        "0",
                        "the trace buffer overran ({}): events lost",
                        stats.display()
                    );
                }
            }
        }
        let text = std::fs::read_to_string(self.dir.join("trace")).expect("read the trace");
        Trace::parse(&text)
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir.join("tracing_on"), "0");
        let _ = std::fs::write(self.dir.join("events/enable"), "0");
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            eprintln!("could not remove the tracefs instance {}: {e}", self.dir.display());
        }
    }
}

const EXT4_SUPER_MAGIC: i64 = 0xEF53;

fn fs_type(path: &Path) -> i64 {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: statfs is a plain C struct; `c` is a valid NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    assert_eq!(rc, 0, "statfs {}", path.display());
    st.f_type as i64
}

/// One fsync/fdatasync (`ext4_sync_file`) of a file or directory.
#[derive(Debug, Clone, Copy)]
pub struct Sync {
    pub ino: u64,
    pub datasync: bool,
    pub enter: Us,
    /// `None`: it had not returned when the trace stopped.
    pub exit: Option<Us>,
    pub ret: i64,
}

impl Sync {
    /// Completed successfully.
    pub fn ok(&self) -> bool {
        self.exit.is_some() && self.ret == 0
    }
}

/// An event about one inode at one time (allocation: `parent` is its directory; unlink: the
/// directory it was removed from; truncate: 0).
#[derive(Debug, Clone, Copy)]
pub struct At {
    pub ino: u64,
    pub parent: u64,
    pub t: Us,
}

#[derive(Debug, Default)]
pub struct Trace {
    pub syncs: Vec<Sync>,
    pub allocs: Vec<At>,
    pub unlinks: Vec<At>,
    pub truncates: Vec<At>,
}

impl Trace {
    /// Parses the instance's `trace` file, lines like
    /// `  kappa-shard-0-1234  [001] ..... 46489.229668: ext4_sync_file_enter: dev 254,0 ino 5556001 parent 5555465 datasync 1`.
    pub fn parse(text: &str) -> Trace {
        let mut trace = Trace::default();
        // Open syncs by task id: a task is in at most one ext4_sync_file at a time.
        let mut open: BTreeMap<u32, usize> = BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
            let Some((head, event, fields)) = split_line(line) else {
                panic!("unparsable trace line: {line:?}");
            };
            let (pid, t) = parse_head(head).unwrap_or_else(|| panic!("trace line head: {line:?}"));
            let field = |name: &str| -> u64 {
                let mut tokens = fields.split_whitespace();
                while let Some(token) = tokens.next() {
                    if token == name {
                        let value = tokens.next().unwrap_or_default();
                        return value
                            .parse::<i64>()
                            .map(|v| v as u64)
                            .unwrap_or_else(|_| panic!("field {name} of {line:?}"));
                    }
                }
                panic!("no field {name} in {line:?}")
            };
            match event {
                "ext4_sync_file_enter" => {
                    open.insert(pid, trace.syncs.len());
                    trace.syncs.push(Sync {
                        ino: field("ino"),
                        datasync: field("datasync") == 1,
                        enter: t,
                        exit: None,
                        ret: 0,
                    });
                }
                "ext4_sync_file_exit" => {
                    let ino = field("ino");
                    if let Some(i) = open.remove(&pid) {
                        assert_eq!(trace.syncs[i].ino, ino, "exit of another inode: {line:?}");
                        trace.syncs[i].exit = Some(t);
                        trace.syncs[i].ret = field("ret") as i64;
                    }
                    // An exit without its enter began before the trace: nothing to pair.
                }
                "ext4_allocate_inode" => {
                    trace.allocs.push(At { ino: field("ino"), parent: field("dir"), t })
                }
                "ext4_unlink_enter" => {
                    trace.unlinks.push(At { ino: field("ino"), parent: field("parent"), t })
                }
                "ext4_truncate_enter" => {
                    trace.truncates.push(At { ino: field("ino"), parent: 0, t })
                }
                other => panic!("unexpected event {other} in {line:?}"),
            }
        }
        trace
    }

    /// Completed syncs of `ino` that began at or after `from` and returned by `by`.
    pub fn synced(&self, ino: u64, from: Us, by: Us) -> Option<Sync> {
        self.syncs
            .iter()
            .copied()
            .find(|s| s.ino == ino && s.ok() && s.enter >= from && s.exit.is_some_and(|e| e <= by))
    }

    /// The last allocation of `ino` (inode numbers are reused after a file is deleted).
    pub fn allocated(&self, ino: u64, by: Us) -> Option<At> {
        self.allocs.iter().rev().copied().find(|a| a.ino == ino && a.t <= by)
    }

    pub fn unlinks_in(&self, parent: u64, from: Us, by: Us) -> Vec<At> {
        self.unlinks
            .iter()
            .copied()
            .filter(|u| u.parent == parent && u.t >= from && u.t <= by)
            .collect()
    }

    pub fn truncated(&self, ino: u64, from: Us, by: Us) -> Option<At> {
        self.truncates.iter().rev().copied().find(|a| a.ino == ino && a.t >= from && a.t <= by)
    }
}

/// `(head, event, fields)` of a line: the head ends with the timestamp.
fn split_line(line: &str) -> Option<(&str, &str, &str)> {
    let start = line.find(": ext4_")?;
    let head = &line[..start];
    let rest = &line[start + 2..];
    let colon = rest.find(':')?;
    Some((head, &rest[..colon], rest[colon + 1..].trim()))
}

/// Task id and timestamp (microseconds) from `comm-tid [cpu] flags secs.micros`.
fn parse_head(head: &str) -> Option<(u32, Us)> {
    let bracket = head.rfind(" [")?;
    let task = head[..bracket].trim_end();
    let pid = task.rsplit('-').next()?.parse().ok()?;
    let stamp = head.split_whitespace().last()?;
    let (secs, frac) = stamp.split_once('.')?;
    let secs: u64 = secs.parse().ok()?;
    // Microseconds: the text output prints six digits.
    let frac = format!("{frac:0<6}");
    let micros: u64 = frac[..6].parse().ok()?;
    Some((pid, secs * 1_000_000 + micros))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_kernels_lines() {
        let text = "# tracer: nop\n\
            \x20 kappa shard-0-29013   [001] ..... 46489.229668: ext4_sync_file_enter: dev 254,0 ino 5556001 parent 5555465 datasync 1 \n\
            \x20 iou-wrk-29014   [000] ..... 46489.229700: ext4_sync_file_enter: dev 254,0 ino 7 parent 5 datasync 0 \n\
            \x20 kappa shard-0-29013   [001] ..... 46489.452035: ext4_sync_file_exit: dev 254,0 ino 5556001 ret 0\n\
            \x20 bash-29027   [000] .N... 46488.507476: ext4_allocate_inode: dev 254,0 ino 10322315 dir 10322313 mode 0100666\n";
        let trace = Trace::parse(text);
        assert_eq!(trace.syncs.len(), 2);
        let s = trace.syncs[0];
        assert_eq!(
            (s.ino, s.datasync, s.enter, s.exit, s.ret),
            (5556001, true, 46489229668, Some(46489452035), 0)
        );
        assert!(trace.syncs[1].exit.is_none() && !trace.syncs[1].ok());
        assert_eq!((trace.allocs[0].ino, trace.allocs[0].parent), (10322315, 10322313));
    }
}
