//! Fault tests: a full disk. The data dir is a 4 MiB tmpfs mounted for the test, which needs root:
//! the test is `#[ignore]`d so a non-root `cargo test` does not pretend to run it, and `.ci/run`
//! runs it explicitly (`cargo test -p kappa-tests --test it -- --ignored`), where it fails loudly
//! if it cannot mount. Storage faults without root run on the simulated disk (`kappa-storage`).

use std::path::Path;
use std::process::Command;

use kappa_engine::{Durability, Engine, Error, ProducerBatch, Seek, TopicConfig};
use kappa_storage::LogConfig;

/// A small tmpfs at `dir`, unmounted on drop.
struct Mount(std::path::PathBuf);

impl Mount {
    fn tmpfs(dir: &Path, size: &str) -> Option<Mount> {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then(|| Mount(dir.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
#[ignore = "needs root: mounts a tmpfs (.ci/run runs it with --ignored)"]
fn a_full_disk_is_a_typed_error_and_what_was_acknowledged_survives() {
    let temp = tempfile::tempdir().expect("tempdir");
    let Some(_mount) = Mount::tmpfs(temp.path(), "4m") else {
        panic!("cannot mount a tmpfs at {} (this test needs root)", temp.path().display());
    };
    let config = LogConfig { segment_size_bytes_max: 1 << 20, ..LogConfig::default() };
    let acked = {
        let engine = Engine::builder()
            .data_dir(temp.path())
            .shards(1)
            .log_config(config.clone())
            .build()
            .expect("engine");
        engine.create_topic("t", TopicConfig::new(1)).expect("topic");
        let producer = engine.producer().with_durability(Durability::Synced);
        let mut acked = 0u64;
        let error = loop {
            let mut batch = ProducerBatch::new();
            for _ in 0..16 {
                batch.push(Some(b"k"), &[7u8; 1000], None);
            }
            match producer.send_packed("t", batch) {
                Ok(acks) => {
                    acked += acks.iter().map(|a| a.last_offset - a.base_offset + 1).sum::<u64>()
                }
                Err(e) => break e,
            }
            assert!(acked < 100_000, "a 4 MiB disk never filled up");
        };
        assert!(error.is_disk_full(), "expected a disk-full error, got: {error:?}");
        assert!(matches!(error, Error::Storage(_)), "{error:?}");
        // The partition refuses further writes with the same typed error instead of losing them.
        let again = producer.send_packed("t", {
            let mut b = ProducerBatch::new();
            b.push(None, b"x", None);
            b
        });
        assert!(again.is_err_and(|e| e.is_disk_full()));
        let _ = engine.shutdown();
        acked
    };
    assert!(acked > 100, "something was acknowledged before the disk filled: {acked}");
    // Reopen on the still-full disk: recovery needs no space, and every acknowledged record is there.
    let engine = Engine::builder()
        .data_dir(temp.path())
        .shards(1)
        .log_config(config)
        .build()
        .expect("reopen");
    let end = engine.partition_offsets("t", 0).expect("offsets").end_offset;
    assert!(end >= acked, "acknowledged {acked} records, the log holds {end}");
    let mut consumer = engine.consumer("t", 0, Seek::Beginning).expect("consumer");
    let mut seen = 0;
    while seen < acked {
        let batch = consumer
            .next_batch_timeout(std::time::Duration::from_secs(5))
            .expect("read")
            .expect("batch");
        seen += batch.records().count() as u64;
    }
}
