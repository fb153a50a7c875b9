//! The kick: a signal whose handler does nothing, sent to one thread of this process so that an
//! interruptible wait it sleeps in (an `io_uring_enter` waiting for completions) returns `EINTR`.
//! glommio treats `EINTR` from its wait as a wake-up and goes round its loop again, which is what
//! a `kill -STOP` / `kill -CONT` of the process did by hand.

/// The kick signal: a real-time signal, chosen above the low ones threading libraries take.
pub fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN() + 6
}

extern "C" fn on_kick(_: libc::c_int) {
    // Nothing: the signal's only job is to end an interruptible wait.
}

fn handler_address() -> libc::sighandler_t {
    on_kick as extern "C" fn(libc::c_int) as libc::sighandler_t
}

/// Installs the kick signal's handler: a no-op, without `SA_RESTART`, so an interrupted wait
/// returns `EINTR` instead of silently restarting. Idempotent; fails with `AlreadyExists` when
/// another handler owns the signal, which is then left alone.
pub fn install_kick_handler() -> std::io::Result<()> {
    // SAFETY: a zeroed sigaction is a valid value to receive the current action into.
    let mut current: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a null new action only reads the current one into `current`, which outlives it.
    if unsafe { libc::sigaction(kick_signal(), std::ptr::null(), &mut current) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if current.sa_sigaction == handler_address() {
        return Ok(());
    }
    if current.sa_sigaction != libc::SIG_DFL {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("signal {} already has a handler", kick_signal()),
        ));
    }
    // SAFETY: a zeroed sigaction is a valid value; we set a handler that touches nothing, an
    // empty mask and no flags (no SA_RESTART, no SA_SIGINFO). Both pointers outlive the call.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler_address();
        libc::sigemptyset(&mut action.sa_mask);
        action.sa_flags = 0;
        if libc::sigaction(kick_signal(), &action, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Sends the kick to thread `tid` of this process. Install the handler first: the default
/// action of a real-time signal ends the process.
pub fn kick_thread(tid: i32) -> std::io::Result<()> {
    // SAFETY: tgkill takes plain integers; the thread group is this process, so no other
    // process can be signalled.
    let r = unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, kick_signal()) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The calling thread's id (what `kick_thread` takes).
pub fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::gettid() }
}

/// Unblocks the kick on the calling thread: one that inherited a mask blocking it (from an
/// application that routes signals through one thread) would never be interrupted.
pub(crate) fn unblock_kick_signal() {
    // SAFETY: the set is initialised by sigemptyset before use; pthread_sigmask only changes
    // the calling thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, kick_signal());
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handler_installs_idempotently_without_sa_restart() {
        install_kick_handler().expect("install");
        install_kick_handler().expect("a second install is a no-op");
        // SAFETY: reading the current action only.
        let mut current: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: as above; `current` outlives the call.
        assert_eq!(unsafe { libc::sigaction(kick_signal(), std::ptr::null(), &mut current) }, 0);
        assert_eq!(current.sa_sigaction, handler_address());
        assert_eq!(current.sa_flags & libc::SA_RESTART, 0, "a kicked wait must not restart");
        // The handler is installed, so a kick to ourselves is harmless.
        kick_thread(gettid()).expect("kick self");
    }

    #[test]
    fn a_kick_to_a_thread_that_is_gone_is_an_error_not_a_signal_elsewhere() {
        install_kick_handler().expect("install");
        let tid = std::thread::spawn(gettid).join().expect("thread");
        // The thread exited; its id is not one of ours (unless reused, which a test this short
        // does not see), and tgkill refuses ids outside this process in any case.
        let err = kick_thread(tid).expect_err("no such thread");
        assert_eq!(err.raw_os_error(), Some(libc::ESRCH));
    }
}
