//! Keeps the kernel's io_uring worker threads off the shard's own CPU.
//!
//! Writes the kernel cannot complete inline (file-extending or unwritten-extent O_DIRECT writes
//! on ext4, buffered writes on tmpfs) run on io-wq worker threads (`iou-wrk-<tid>`), which take
//! the submitting thread's CPU affinity: the shard's single CPU. While replay keeps the shard
//! thread 100% busy, a live append's write then waits for the CPU scheduler to preempt the
//! shard (measured: live p99 0.5 ms -> 15 ms on tmpfs during a rebuild, with no executor
//! overrun). `IORING_REGISTER_IOWQ_AFF` moves the thread's io-wq (shared by all of its rings)
//! to the other CPUs online, where they run at once.
//!
//! `KAPPA_IOWQ_CPUS=own` leaves them where they start, on the shard's CPU, for measuring what the
//! placement costs (unset or `others`: the default above). There is no "every CPU": a worker is
//! forked from the shard thread and inherits the CPUs it asked for with `sched_setaffinity`, and
//! the kernel cuts any later affinity to those whenever the two overlap (`set_cpus_allowed_ptr`
//! and `user_cpus_ptr`; measured on 6.18: a mask of CPUs {0, 1} from a shard on CPU 1 left its
//! workers on CPU 1 alone). So a mask with the shard's CPU in it means the shard's CPU only, and
//! the choice is the shard's CPU or the others.

/// `IORING_REGISTER_IOWQ_AFF` (Linux 5.14).
const IORING_REGISTER_IOWQ_AFF: libc::c_uint = 17;

/// Where a shard's io_uring workers may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placement {
    /// Every online CPU but the shard's own (the default).
    OtherCpus,
    /// Where they start: the submitting thread's affinity.
    OwnCpu,
}

impl Placement {
    /// From `KAPPA_IOWQ_CPUS` (`others`, `own`); the default when unset, and when unknown with a
    /// warning (a typo must not measure the default under another label unnoticed).
    pub(crate) fn from_env() -> Placement {
        match std::env::var("KAPPA_IOWQ_CPUS").as_deref() {
            Ok("own") => Placement::OwnCpu,
            Ok("others") | Err(_) => Placement::OtherCpus,
            Ok(other) => {
                tracing::warn!(
                    value = other,
                    "KAPPA_IOWQ_CPUS is neither `others` nor `own`; using `others`"
                );
                Placement::OtherCpus
            }
        }
    }
}

/// Places the calling thread's io_uring workers as `placement` says.
pub(crate) fn place_workers(placement: Placement) -> IoWorkers {
    match placement {
        Placement::OtherCpus => keep_off_own_cpus(),
        Placement::OwnCpu => IoWorkers::Unchanged,
    }
}

fn online_cpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }).max(1) as usize
}

/// Sets the calling thread's io-wq affinity to `cpus`; the errno on failure.
fn register_workers_cpus(cpus: &libc::cpu_set_t) -> Result<(), i32> {
    // SAFETY: plain syscalls on a zeroed, correctly sized params structure we own and the caller's
    // cpu set; the throwaway ring's fd is closed before returning.
    unsafe {
        // The affinity belongs to the thread's io_uring task context, shared by every ring it
        // uses: any ring fd of this thread can set it, so a one-entry ring of our own does.
        let mut params = [0u8; 120]; // struct io_uring_params
        let fd = libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr()) as i32;
        if fd < 0 {
            return Err(*libc::__errno_location());
        }
        let rc = libc::syscall(
            libc::SYS_io_uring_register,
            fd,
            IORING_REGISTER_IOWQ_AFF,
            cpus as *const libc::cpu_set_t,
            std::mem::size_of::<libc::cpu_set_t>(),
        );
        let errno = *libc::__errno_location();
        libc::close(fd);
        if rc < 0 {
            Err(errno)
        } else {
            Ok(())
        }
    }
}

/// The CPUs the calling thread's io_uring workers may use after `keep_off_own_cpus`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IoWorkers {
    /// Moved to these CPUs.
    Moved(Vec<usize>),
    /// Left where they were: the thread is not pinned, or no other CPU is online.
    Unchanged,
    /// The kernel refused (too old, or no io_uring context yet); the error.
    Refused(i32),
}

/// Moves the calling thread's io_uring workers to every online CPU the thread itself may not
/// run on. Call it on a pinned executor thread after its rings exist.
pub(crate) fn keep_off_own_cpus() -> IoWorkers {
    // SAFETY: sched_getaffinity and the CPU_* macros on zeroed, correctly sized sets we own.
    unsafe {
        let mut own: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut own) != 0 {
            return IoWorkers::Refused(*libc::__errno_location());
        }
        let online = online_cpus();
        let own_count = libc::CPU_COUNT(&own) as usize;
        if own_count >= online {
            return IoWorkers::Unchanged;
        }
        let mut others: libc::cpu_set_t = std::mem::zeroed();
        let mut moved = Vec::new();
        for cpu in 0..online.min(libc::CPU_SETSIZE as usize) {
            if !libc::CPU_ISSET(cpu, &own) {
                libc::CPU_SET(cpu, &mut others);
                moved.push(cpu);
            }
        }
        if moved.is_empty() {
            return IoWorkers::Unchanged;
        }
        match register_workers_cpus(&others) {
            Ok(()) => IoWorkers::Moved(moved),
            Err(errno) => IoWorkers::Refused(errno),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CPUs a thread of this process named `comm` may run on (from /proc).
    fn allowed_cpus_of(comm: &str) -> Vec<String> {
        let mut found = Vec::new();
        for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task").flatten() {
            let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if name.trim() == comm {
                let status =
                    std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
                if let Some(line) = status.lines().find(|l| l.starts_with("Cpus_allowed_list:")) {
                    found.push(line["Cpus_allowed_list:".len()..].trim().to_string());
                }
            }
        }
        found
    }

    /// Runs 64 file-extending writes (ext4 and tmpfs punt those to io-wq) on an executor pinned
    /// to the last CPU after placing its workers as `placement` says; (what `place_workers`
    /// said, that CPU, the CPUs each of its io_uring workers may run on).
    fn workers_placed(placement: Placement) -> (IoWorkers, usize, Vec<Vec<usize>>) {
        let online = std::thread::available_parallelism().map_or(1, |n| n.get());
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("grow");
        let own = online - 1;
        let (placed, workers) = glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(own))
            .io_memory(1 << 20)
            .spawn(move || async move {
                let placed = place_workers(placement);
                let file = glommio::io::DmaFile::create(&path).await.expect("create");
                for i in 0..64u64 {
                    let mut buf = file.alloc_dma_buffer(4096);
                    buf.as_bytes_mut().fill(i as u8);
                    file.write_at(buf, i * 4096).await.expect("write");
                }
                // SAFETY: gettid has no preconditions.
                let tid = unsafe { libc::syscall(libc::SYS_gettid) };
                let workers = allowed_cpus_of(&format!("iou-wrk-{tid}"));
                file.close().await.expect("close");
                (placed, workers)
            })
            .expect("executor")
            .join()
            .expect("join");
        assert!(!workers.is_empty(), "no io_uring worker ran a punted write; nothing was checked");
        let workers = workers
            .iter()
            .map(|allowed| {
                allowed
                    .split(',')
                    .flat_map(|part| match part.split_once('-') {
                        Some((a, b)) => (a.parse().unwrap_or(0)..=b.parse().unwrap_or(0)).collect(),
                        None => vec![part.parse().unwrap_or(usize::MAX)],
                    })
                    .collect()
            })
            .collect();
        (placed, own, workers)
    }

    /// On a pinned executor, the io_uring workers that run its punted writes (file-extending
    /// DMA writes) may run on every other CPU, never on the executor's own (the default).
    #[test]
    fn io_uring_workers_leave_the_pinned_executors_cpu() {
        let online = std::thread::available_parallelism().map_or(1, |n| n.get());
        if online < 2 {
            // One CPU: there is nowhere else to put them, and `keep_off_own_cpus` says so.
            assert_eq!(keep_off_own_cpus(), IoWorkers::Unchanged);
            return;
        }
        let (placed, own, workers) = workers_placed(Placement::OtherCpus);
        let expected: Vec<usize> = (0..online).filter(|&c| c != own).collect();
        assert_eq!(placed, IoWorkers::Moved(expected));
        for cpus in workers {
            assert!(!cpus.contains(&own), "an io_uring worker may run on the executor's CPU {own}");
        }
    }

    /// Why the placement is made once, at the shard's start, and does not follow replay: on this
    /// kernel (6.18) `IORING_REGISTER_IOWQ_AFF` sets the mask of workers created after it, and a
    /// worker that already exists keeps its CPUs while it has work (it leaves only after 5 s
    /// idle). Workers on the shard's CPU cut the live path's latency when nothing replays
    /// (`kappa-bench tail` on tmpfs at 10,000 appends/s, 3 alternated pairs, load 6.5-6.9,
    /// `KAPPA_IOWQ_CPUS=own` against the default: shard append-to-ack p99 0.27-0.33 ms against
    /// 4.1-7.7 ms), but moving them off it when a replay starts would leave a busy worker where
    /// it was. This asserts that behaviour; if it fails, the kernel moves existing workers and a
    /// placement that follows replay becomes possible.
    #[test]
    fn a_worker_that_exists_keeps_its_cpus_when_the_mask_changes() {
        let online = std::thread::available_parallelism().map_or(1, |n| n.get());
        if online < 2 {
            return; // One CPU: nowhere else to put them.
        }
        let own = online - 1;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("grow");
        let (before, moved, after) =
            glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(own))
                .io_memory(1 << 20)
                .spawn(move || async move {
                    let file = glommio::io::DmaFile::create(&path).await.expect("create");
                    // SAFETY: gettid has no preconditions.
                    let tid = unsafe { libc::syscall(libc::SYS_gettid) };
                    let comm = format!("iou-wrk-{tid}");
                    let mut at = 0u64;
                    let mut punt = || {
                        let file = &file;
                        let from = at;
                        at += 64 * 4096;
                        async move {
                            for i in 0..64u64 {
                                let mut buf = file.alloc_dma_buffer(4096);
                                buf.as_bytes_mut().fill(i as u8);
                                file.write_at(buf, from + i * 4096).await.expect("write");
                            }
                        }
                    };
                    punt().await;
                    let before = allowed_cpus_of(&comm);
                    let moved = keep_off_own_cpus();
                    punt().await;
                    let after = allowed_cpus_of(&comm);
                    file.close().await.expect("close");
                    (before, moved, after)
                })
                .expect("executor")
                .join()
                .expect("join");
        assert!(!before.is_empty(), "no io_uring worker ran a punted write; nothing was checked");
        assert!(matches!(moved, IoWorkers::Moved(_)), "{moved:?}");
        let own = own.to_string();
        assert!(before.iter().all(|cpus| *cpus == own), "{before:?}");
        assert!(
            after.contains(&own),
            "every worker left CPU {own} after the mask changed ({after:?}): the kernel moves \
             existing workers now"
        );
    }

    /// `KAPPA_IOWQ_CPUS=own`: the workers stay on the executor's CPU, where they start (fails
    /// with the placement falling back to the default).
    #[test]
    fn io_uring_workers_stay_on_the_executors_cpu_when_asked() {
        let (placed, own, workers) = workers_placed(Placement::OwnCpu);
        assert_eq!(placed, IoWorkers::Unchanged);
        for cpus in workers {
            assert_eq!(cpus, vec![own], "an io_uring worker left the executor's CPU");
        }
    }
}
