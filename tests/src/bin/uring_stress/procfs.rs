//! What `/proc` says about the reproducer's executors: their io_uring descriptors, the requests
//! the kernel holds for them, their threads' kernel stacks and CPU time.

/// This process's io_uring file descriptors, ascending.
pub fn io_uring_fds() -> Vec<i32> {
    let mut fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| {
                let e = e.ok()?;
                let target = std::fs::read_link(e.path()).ok()?;
                (target.to_string_lossy() == "anon_inode:[io_uring]")
                    .then(|| e.file_name().to_string_lossy().parse().ok())
                    .flatten()
            })
            .collect()
        })
        .unwrap_or_default();
    fds.sort_unstable();
    fds
}

/// User + system CPU time of thread `tid` of this process, in seconds.
pub fn thread_cpu_seconds(tid: i64) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap_or_default();
    // Fields after the parenthesised name: state is the first, utime the 12th, stime the 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 =
        fields.get(11..13).map_or(0, |f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum());
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / per_second
}

/// Requests of this executor the kernel has taken and not completed, less glommio's standing
/// ones: on the ring it sleeps on, the poll of the latency ring's fd and the throughput timer
/// with its linked eventfd write; on the latency ring, the eventfd read and its timers.
pub fn kernel_io_in_flight(rings: &[i32]) -> i64 {
    let mut io = 0;
    for fd in rings {
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap_or_default();
        let field = |name: &str| -> i64 {
            info.lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().parse().unwrap_or(0)))
                .unwrap_or(0)
        };
        let in_flight = field("SqHead:") - field("CqTail:");
        let polls: Vec<&str> = info.lines().filter(|l| l.trim_start().starts_with("op=")).collect();
        if polls.iter().any(|l| l.contains("op=22")) {
            continue; // the latency ring: eventfd read and timers, never our I/O here
        }
        if polls.iter().any(|l| l.contains("op=6")) {
            io += in_flight - 3; // the sleeping ring's standing requests
        } else {
            io += in_flight;
        }
    }
    io
}

/// Prints what the kernel says about a stalled executor: its rings, its thread, its io-wq workers.
pub fn dump(tid: i64, rings: &[i32]) {
    for fd in rings {
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap_or_default();
        let keep = ["SqHead", "SqTail", "CqHead", "CqTail", "SQEs", "CQEs", "PollList", "  op="];
        let short: Vec<&str> = info
            .lines()
            .filter(|l| keep.iter().any(|k| l.trim_start().starts_with(k.trim_start())))
            .collect();
        println!("  ring fd {fd}: {}", short.join(" | "));
    }
    let task = format!("/proc/self/task/{tid}");
    let read = |f: &str| std::fs::read_to_string(format!("{task}/{f}")).unwrap_or_default();
    let state: Vec<String> = read("status")
        .lines()
        .filter(|l| l.starts_with("State") || l.starts_with("SigPnd"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    println!("  thread {tid}: wchan={} {}", read("wchan"), state.join(" "));
    println!("    {}", read("stack").trim_end().replace('\n', "\n    "));
    // io-wq workers are threads of this process named iou-wrk-<tid of their submitter>.
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            if comm.trim() == format!("iou-wrk-{tid}") {
                let stack = std::fs::read_to_string(t.path().join("stack")).unwrap_or_default();
                println!(
                    "  {} {}: {}",
                    comm.trim(),
                    t.file_name().to_string_lossy(),
                    stack.lines().take(3).collect::<Vec<_>>().join(" <- ")
                );
            }
        }
    }
}
