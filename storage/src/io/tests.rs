//! Tests of the I/O seam on the real disk: the namespace operations, async (blocking pool) and
//! blocking, and atomic writes racing from many threads.

use std::path::Path;

use super::*;

#[test]
fn temp_names_are_unique_per_call() {
    let a = temp_path_for(Path::new("/x/meta.json"));
    let b = temp_path_for(Path::new("/x/meta.json"));
    assert_ne!(a, b);
    assert_eq!(a.parent(), Some(Path::new("/x")));
    let name = a.file_name().and_then(|n| n.to_str()).expect("utf-8");
    assert!(name.starts_with(".meta.json.") && name.ends_with(".kappa-tmp"), "{name}");
}

/// Regression (issue 8, defect 3): every metadata writer shared one temp file name, so eight
/// threads writing the same file failed with rename errors. Each call now has its own temp file.
#[test]
fn concurrent_atomic_writes_of_one_file_all_succeed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("topic.json");
    let threads: Vec<_> = (0..8u8)
        .map(|t| {
            let path = path.clone();
            std::thread::spawn(move || {
                for _ in 0..20 {
                    Disk::Dma.write_file_atomic_blocking(&path, &[t; 100]).expect("atomic write");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("thread");
    }
    let bytes = std::fs::read(&path).expect("read");
    assert_eq!(bytes.len(), 100);
    assert!(bytes.iter().all(|b| *b == bytes[0]), "one writer's bytes, whole");
    let names: Vec<_> = std::fs::read_dir(dir.path()).expect("list").collect();
    assert_eq!(names.len(), 1, "no temp file left behind: {names:?}");
}

#[test]
fn namespace_operations_on_the_real_disk_async_and_blocking() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_path_buf();
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(1 << 20)
        .make()
        .expect("executor")
        .run(async move {
            let disk = Disk::Dma;
            let nested = root.join("a/b/c");
            disk.create_dir_all(&nested).await.expect("mkdir");
            disk.create_dir_all(&nested).await.expect("mkdir again is fine");
            let file = nested.join("x");
            disk.write_file_atomic(&file, b"hello").await.expect("write");
            assert_eq!(disk.read_file(&file).await.expect("read"), b"hello");
            let meta = disk.metadata(&file).await.expect("stat").expect("exists");
            assert_eq!(meta, Metadata { len: 5, is_dir: false });
            disk.rename(&file, &nested.join("y")).await.expect("rename");
            let names = disk.list_dir(&nested).await.expect("list");
            assert_eq!(names, vec![DirEntry { name: "y".into(), is_dir: false }]);
            disk.remove_file(&nested.join("y")).await.expect("rm");
            assert!(disk.remove_file(&nested.join("y")).await.expect_err("gone").is_not_found());
            disk.sync_dir(&nested).await.expect("fsync dir");
            assert!(disk.metadata(&file).await.expect("stat").is_none());
            assert!(disk.read_file(&file).await.expect_err("missing").is_not_found());
        });
    let disk = Disk::Dma;
    let file = dir.path().join("z");
    disk.write_file_atomic_blocking(&file, b"blocking").expect("write");
    assert_eq!(disk.read_file_blocking(&file).expect("read"), b"blocking");
    assert!(disk.create_dir_all_blocking(&file.join("under-a-file")).is_err());
}

/// Unlinks `dir/target` whenever it is opened (inotify `IN_OPEN`, raised inside the open before
/// the opener sees its descriptor), until `dir/stop` is opened. A thread of its own.
fn unlink_on_open(dir: &Path, target: &'static str) -> std::thread::JoinHandle<u64> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let dir = dir.to_path_buf();
    let c_dir = CString::new(dir.as_os_str().as_bytes()).expect("no NUL in a temp path");
    // SAFETY: plain syscalls on a descriptor this function owns and a NUL-terminated path.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
    assert!(fd >= 0, "inotify_init1: {}", std::io::Error::last_os_error());
    let watch = unsafe { libc::inotify_add_watch(fd, c_dir.as_ptr(), libc::IN_OPEN) };
    assert!(watch >= 0, "inotify_add_watch: {}", std::io::Error::last_os_error());
    std::thread::spawn(move || {
        let mut unlinked = 0;
        let mut buf = [0u8; 4096];
        'events: loop {
            // SAFETY: `buf` is valid for its length; `fd` is open until the loop ends.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            assert!(n > 0, "inotify read: {}", std::io::Error::last_os_error());
            let mut at = 0;
            while at + 16 <= n as usize {
                // struct inotify_event { wd: i32, mask: u32, cookie: u32, len: u32, name }
                let len = u32::from_ne_bytes(buf[at + 12..at + 16].try_into().expect("4 bytes"));
                let name = &buf[at + 16..at + 16 + len as usize];
                let name = &name[..name.iter().position(|b| *b == 0).unwrap_or(name.len())];
                if name == b"stop" {
                    break 'events;
                }
                if name == target.as_bytes() && std::fs::remove_file(dir.join(target)).is_ok() {
                    unlinked += 1;
                }
                at += 16 + len as usize;
            }
        }
        // SAFETY: the descriptor is ours and closed once.
        unsafe { libc::close(fd) };
        unlinked
    })
}

/// The vendored glommio's third patch (`third_party/glommio/KAPPA-PATCH.md`): `DmaFile::open_at`
/// learned the file system type with `statfs(path).unwrap()` after the open, so a path removed
/// between the open and that call panicked the executor (seen when a failed `create_topic` removed
/// the partition directories another shard was still opening). It now asks `fstatfs` of the open
/// descriptor. Here every open of the file unlinks it at once (a watcher on inotify's `IN_OPEN`,
/// raised inside the open), racing the opener's next step: each open must succeed or fail with
/// "not found", and never panic. With `statfs(path).unwrap()` back, the executor panics within
/// the first few hundred opens.
#[test]
fn a_dma_open_racing_the_removal_of_its_path_errors_and_never_panics() {
    const TRIES: u32 = 2_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_path_buf();
    let watcher = unlink_on_open(&root, "f");
    let (opened, missing) = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(1 << 20)
        .make()
        .expect("executor")
        .run(async move {
            prime_iopoll(&root).await.expect("prime");
            let (path, staged) = (root.join("f"), root.join("f.new"));
            let (mut opened, mut missing) = (0u32, 0u32);
            for _ in 0..TRIES {
                // Renamed into place, so the only open of `f` the watcher sees is this one.
                std::fs::write(&staged, [7u8; BLOCK_SIZE]).expect("stage");
                std::fs::rename(&staged, &path).expect("rename");
                match open_read(&path).await {
                    Ok(file) => {
                        opened += 1;
                        file.close().await.expect("close");
                    }
                    Err(e) if e.is_not_found() => missing += 1,
                    Err(e) => panic!("opening a file removed meanwhile: {e}"),
                }
                let _ = std::fs::remove_file(&path);
            }
            // Its open (inside the write) stops the watcher.
            std::fs::write(root.join("stop"), b"").expect("stop the watcher");
            (opened, missing)
        });
    let unlinked = watcher.join().expect("watcher");
    assert!(opened > 0 && unlinked > 0, "opened {opened}, missing {missing}, unlinked {unlinked}");
}
