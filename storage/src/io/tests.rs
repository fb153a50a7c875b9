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
