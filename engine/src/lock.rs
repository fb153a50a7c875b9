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

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::Error;

/// The lock file's name inside a data dir.
pub const LOCK_FILE: &str = ".lock";

/// An exclusive hold on a data dir, released when dropped (or when the process dies).
#[derive(Debug)]
pub struct DirLock {
    path: PathBuf,
    _file: File,
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
        // SAFETY: `flock` on a file descriptor this function owns (open until `file` drops); it
        // touches no memory.
        let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let pid = text.trim().parse::<u32>().ok();
                return Err(Error::Locked { dir: dir.to_path_buf(), pid });
            }
            return Err(Error::Io { op: "flock", path, source: e });
        }
        // Ours now: say who holds it. Not synced: the pid only matters while we run.
        file.set_len(0).map_err(io("truncate", &path))?;
        file.rewind().map_err(io("seek", &path))?;
        writeln!(file, "{}", std::process::id()).map_err(io("write", &path))?;
        Ok(DirLock { path, _file: file })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_in_the_same_process_is_refused_with_our_pid_and_freed_on_drop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = DirLock::acquire(dir.path()).expect("first lock");
        match DirLock::acquire(dir.path()) {
            Err(Error::Locked { dir: locked, pid }) => {
                assert_eq!(locked, dir.path());
                assert_eq!(pid, Some(std::process::id()));
            }
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(first);
        DirLock::acquire(dir.path()).expect("free again once the first is dropped");
    }
}
