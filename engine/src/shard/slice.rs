//! Asks the kernel for a short scheduler slice for the shard thread (EEVDF custom slices,
//! `sched_setattr` with `sched_runtime` on a `SCHED_OTHER` thread, Linux 6.12+; unprivileged).
//!
//! Why: during a rebuild the shard thread is never idle, so when other processes share its CPU
//! it no longer wakes up ahead of them: it waits in the run queue for their slices (the kernel's
//! base slice, 1.4 ms on 2 CPUs) and every live request behind it waits as long. `kappa-bench
//! mixed` measured the shard thread runnable but not running for 53-67% of a rebuild, 1.9-3.3 ms
//! per timeslice, under other processes' builds. A thread with a shorter slice gets an earlier
//! virtual deadline, so the kernel picks it sooner whenever it is eligible, and a waking thread
//! with a shorter slice may preempt the running one; its share of the CPU stays the same.
//! `ReplayConfig::kernel_slice` sets it (`None`: the kernel's default).

use std::time::Duration;

/// `struct sched_attr` (include/uapi/linux/sched/types.h, `SCHED_ATTR_SIZE_VER1`).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
    util_min: u32,
    util_max: u32,
}

/// `SCHED_FLAG_RESET_ON_FORK`: the only flag kept from the thread's attributes.
const RESET_ON_FORK: u64 = 0x01;

/// What `set` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slice {
    /// The calling thread's slice is now this (the kernel clamps a request to 0.1-100 ms).
    Set(Duration),
    /// The thread is not `SCHED_OTHER`/`SCHED_BATCH`, or the kernel keeps no custom slice
    /// (before 6.12): left as it was.
    Unchanged,
    /// The kernel refused; the errno.
    Refused(i32),
}

fn get_attr() -> Result<SchedAttr, i32> {
    let mut attr = SchedAttr::default();
    // SAFETY: `sched_getattr` writes at most `size` bytes into the structure we own.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            0,
            &mut attr as *mut SchedAttr,
            std::mem::size_of::<SchedAttr>() as u32,
            0,
        )
    };
    if r == 0 {
        Ok(attr)
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

/// The calling thread's scheduler slice (`sched_runtime` of a fair thread).
pub(crate) fn get() -> Result<Duration, i32> {
    get_attr().map(|a| Duration::from_nanos(a.runtime))
}

/// Asks for a `slice` long scheduler slice for the calling thread, keeping its policy and nice.
pub(crate) fn set(slice: Duration) -> Slice {
    let mut attr = match get_attr() {
        Ok(attr) => attr,
        Err(errno) => return Slice::Refused(errno),
    };
    if attr.policy != libc::SCHED_OTHER as u32 && attr.policy != libc::SCHED_BATCH as u32 {
        return Slice::Unchanged;
    }
    attr.size = std::mem::size_of::<SchedAttr>() as u32;
    attr.flags &= RESET_ON_FORK;
    attr.runtime = slice.as_nanos() as u64;
    // SAFETY: `sched_setattr` reads `attr.size` bytes of the structure we own.
    let r = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
    if r != 0 {
        return Slice::Refused(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
    }
    match get() {
        Ok(now) if !now.is_zero() => Slice::Set(now),
        _ => Slice::Unchanged,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a kernel with custom slices (6.12+, as on the machines this runs on) a thread gets the
    /// slice it asked for, clamped to the kernel's bounds, and keeps its policy.
    #[test]
    fn a_thread_gets_the_slice_it_asks_for() {
        std::thread::spawn(|| {
            let before = get_attr().expect("sched_getattr");
            assert_eq!(set(Duration::from_micros(150)), Slice::Set(Duration::from_micros(150)));
            assert_eq!(get(), Ok(Duration::from_micros(150)));
            assert_eq!(get_attr().expect("sched_getattr").policy, before.policy);
            assert_eq!(set(Duration::from_micros(1)), Slice::Set(Duration::from_micros(100)));
        })
        .join()
        .expect("thread");
    }

    /// Every shard thread asks for `ReplayConfig::kernel_slice` when it starts.
    #[test]
    fn a_shard_thread_runs_with_the_configured_slice() {
        let dir = tempfile::tempdir().expect("temp dir");
        let slice = Duration::from_micros(250);
        let engine = crate::Engine::builder()
            .data_dir(dir.path())
            .shards(1)
            .replay(crate::ReplayConfig { kernel_slice: Some(slice), ..Default::default() })
            .build()
            .expect("engine");
        engine.create_topic("t", crate::TopicConfig::new(1)).expect("topic");
        let on_shard = engine.run_on_partition("t", 0, |_| async { get() }).expect("job");
        assert_eq!(on_shard, Ok(slice));
        engine.shutdown().expect("shutdown");
    }
}
