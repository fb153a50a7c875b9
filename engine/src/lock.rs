//! One owner per data dir: an exclusive `flock` on `DIR/.lock`, held for as long as the owner runs.
//!
//! Two writers on one data dir lose acknowledged records (each keeps its own idea of every
//! partition's end and overwrites the other's frames), so an `Engine` and every tool that writes
//! (`kappa gen`, `kappa repair`, `kappa serve` through its engine) take this lock first and refuse
//! to start without it. `flock` rather than a pid file: the kernel drops the lock when the holding
//! process dies, however it dies (SIGKILL included), so a crash never leaves a stale lock behind.
//! `flock` locks belong to an open file description, so a second `open` + `flock` in the same
//! process is refused too. The holder writes its pid into the file, for the error a second owner
//! gets; readers (`kappa verify`, `kappa inspect`) do not take the lock.
//!
//! A child process forked by any thread of the owner (`std::process::Command`) holds a copy of
//! the lock's descriptor until it calls `exec` (which closes it: `O_CLOEXEC`), and with it the
//! lock: an engine dropped and built again on the same dir in that moment found its own pid in
//! the file and was refused (seen in CI, under load, beside a test that spawns processes). The
//! process therefore keeps a list of the dirs it holds: a lock held by a dir on that list is a
//! second owner here (refused at once), while a lock that names this process but is on no list
//! is such a transient copy, and `acquire` waits for it (up to `INHERITED_WAIT`).

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use crate::Error;

/// The lock files this process holds, by device and inode (`DirLock::id`).
static HELD: Mutex<Vec<(u64, u64)>> = Mutex::new(Vec::new());

/// How long `acquire` waits for a lock that names this process but that no `DirLock` of it holds
/// (a child process between `fork` and `exec` holding a copy of a dropped lock's descriptor), in
/// steps of `INHERITED_STEP`: counted, not timed (time comes from the engine's `Clock`, and
/// sleeping longer than asked only makes the wait longer).
const INHERITED_WAIT: Duration = Duration::from_secs(5);
const INHERITED_STEP: Duration = Duration::from_millis(5);

fn held() -> std::sync::MutexGuard<'static, Vec<(u64, u64)>> {
    HELD.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The lock file's name inside a data dir.
pub const LOCK_FILE: &str = ".lock";

/// An exclusive hold on a data dir, released when dropped (or when the process dies).
#[derive(Debug)]
pub struct DirLock {
    path: PathBuf,
    /// The lock file's device and inode, in `HELD` while this lock lives.
    id: (u64, u64),
    /// Always `Some` until `drop`, which closes it while it holds the list.
    file: Option<File>,
}

impl DirLock {
    /// Takes the lock on `dir` (which must exist) without waiting: `Error::Locked`, naming the
    /// holder's pid, when another engine or tool holds it, in this process or another.
    pub fn acquire(dir: &Path) -> Result<DirLock, Error> {
        let path = dir.join(LOCK_FILE);
        let io = |op: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io { op, path, source }
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io("open", &path))?;
        let meta = file.metadata().map_err(io("stat", &path))?;
        let id = (meta.dev(), meta.ino());
        let mut waited = Duration::ZERO;
        loop {
            {
                // The check and the entry under one hold of the list: where `flock` is per
                // process (NFS), two threads of ours must not both pass the check.
                let mut list = held();
                if list.contains(&id) {
                    return Err(Error::Locked {
                        dir: dir.to_path_buf(),
                        pid: Some(std::process::id()),
                    });
                }
                // SAFETY: `flock` on a file descriptor this function owns (open until `file`
                // drops); it touches no memory.
                let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
                if r == 0 {
                    list.push(id);
                    break;
                }
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(Error::Io { op: "flock", path, source: e });
            }
            let mut text = String::new();
            file.rewind().map_err(io("seek", &path))?;
            let _ = file.read_to_string(&mut text);
            let pid = text.trim().parse::<u32>().ok();
            // Named us, held by no `DirLock` of ours: a forked child's copy, gone at its `exec`.
            let inherited = pid == Some(std::process::id()) && !held().contains(&id);
            if !inherited || waited >= INHERITED_WAIT {
                return Err(Error::Locked { dir: dir.to_path_buf(), pid });
            }
            std::thread::sleep(INHERITED_STEP);
            waited += INHERITED_STEP;
        }
        // Ours now, and on the list: the `DirLock` exists before anything else can fail, so an
        // error below drops it, which takes the entry off the list (a stale entry would refuse
        // the dir to this process for good) and closes the file (the kernel's lock with it).
        let lock = DirLock { path, id, file: Some(file) };
        // Say who holds it. Not synced: the pid only matters while we run.
        let mut file = lock.file.as_ref().expect("set above");
        file.set_len(0).map_err(io("truncate", &lock.path))?;
        file.rewind().map_err(io("seek", &lock.path))?;
        writeln!(file, "{}", std::process::id()).map_err(io("write", &lock.path))?;
        Ok(lock)
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // The file closes (the kernel's lock with it) while the list is held, so no thread of
        // ours sees neither the entry nor a free lock in between (where `flock` is per process,
        // it could otherwise take the lock this close is about to release).
        let mut list = held();
        drop(self.file.take());
        list.retain(|id| *id != self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStringExt;

    /// Held by the test that forks and by the FIFO test: a child forked while the FIFO test has
    /// its lock file open keeps that descriptor (and its `flock`) until it exits, and the FIFO
    /// test's next attempt would meet it instead of the error it tests.
    static FORKING: Mutex<()> = Mutex::new(());

    #[test]
    fn a_second_lock_in_the_same_process_is_refused_with_our_pid_and_freed_on_drop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = DirLock::acquire(dir.path()).expect("first lock");
        #[allow(clippy::disallowed_methods)] // A test measures that the refusal does not wait.
        let started = std::time::Instant::now();
        let second = DirLock::acquire(dir.path());
        let took = started.elapsed();
        match second {
            Err(Error::Locked { dir: locked, pid }) => {
                assert_eq!(locked, dir.path());
                assert_eq!(pid, Some(std::process::id()));
            }
            other => panic!("expected Locked, got {other:?}"),
        }
        // Refused at once from the list of held locks, not after the wait for a forked child's
        // copy (`INHERITED_WAIT`, 5 s), which a lock held by a `DirLock` of ours never gets.
        assert!(took < INHERITED_WAIT / 2, "refused after {took:?}: it waited");
        drop(first);
        DirLock::acquire(dir.path()).expect("free again once the first is dropped");
    }

    /// A lock whose pid write fails leaves nothing behind: the next `acquire` meets the same
    /// error, not `Locked` naming this process. The lock file is a FIFO, which opens, stats and
    /// `flock`s, but cannot be truncated. With the held-locks entry made before the `DirLock`
    /// that removes it on drop, the second call got `Locked { pid: our pid }` for good.
    #[test]
    fn a_lock_that_failed_after_taking_the_flock_leaves_no_entry() {
        let _serial = FORKING.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = std::ffi::CString::new(dir.path().join(LOCK_FILE).into_os_string().into_vec())
            .expect("a path without NUL");
        // SAFETY: `mkfifo` reads the NUL-terminated path it is given.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0, "mkfifo");
        for attempt in 0..2 {
            match DirLock::acquire(dir.path()) {
                Err(Error::Io { op: "truncate", .. }) => {}
                other => panic!("attempt {attempt}: expected the truncate error, got {other:?}"),
            }
        }
    }

    /// A child forked while the lock was held keeps a copy of its descriptor (until its `exec`,
    /// here until it exits): the lock dropped and taken again meanwhile waits for the child
    /// instead of refusing with our own pid. Without the wait: `Locked { pid: our pid }`. The
    /// child exits when told, 200 ms after the lock was dropped, so the second `acquire` begins
    /// while the child holds the copy unless this thread lost its CPU that long (then the test
    /// passes without having tested the wait; it never fails for it).
    #[test]
    fn a_lock_held_by_a_forked_childs_copy_is_waited_for() {
        let _serial = FORKING.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().expect("tempdir");
        let first = DirLock::acquire(dir.path()).expect("first lock");
        let mut pipe = [0i32; 2];
        // SAFETY: `pipe2` writes two descriptors into the array it is given.
        // Close-on-exec: a process another test spawns meanwhile must not keep the write end.
        assert_eq!(unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) }, 0, "pipe");
        let [read_end, write_end] = pipe;
        // SAFETY: the child only closes, reads and exits (async-signal-safe calls), as a child
        // between `fork` and `exec` would.
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork: {}", std::io::Error::last_os_error());
        if child == 0 {
            // SAFETY: see above; the read returns when the parent writes or closes its end.
            unsafe {
                libc::close(write_end);
                let mut byte = 0u8;
                libc::read(read_end, (&mut byte as *mut u8).cast(), 1);
                libc::_exit(0);
            }
        }
        // SAFETY: the parent's copy of the read end, unused here.
        unsafe { libc::close(read_end) };
        drop(first);
        let released = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let releaser = {
            let released = released.clone();
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(200));
                released.store(true, std::sync::atomic::Ordering::Release);
                // SAFETY: closing the write end this test owns lets the child's read return.
                unsafe { libc::close(write_end) };
            })
        };
        let again = DirLock::acquire(dir.path());
        let was_released = released.load(std::sync::atomic::Ordering::Acquire);
        releaser.join().expect("the releasing thread");
        // SAFETY: reaping the child forked above.
        unsafe { libc::waitpid(child, std::ptr::null_mut(), 0) };
        again.expect("the lock once the child's copy is gone");
        assert!(was_released, "acquired while the child still held its copy");
    }
}
