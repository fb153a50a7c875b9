//! The fsync protocol of the production path, seen by the kernel: every fdatasync and directory
//! fsync that durability depends on, on a real ext4 data dir through glommio's DMA files (no
//! simulated disk), checked against what was acknowledged and when.
//!
//! Why kernel tracepoints are the observer. A power cut is what an fsync protects against, and
//! none can be staged here: this kernel has no device-mapper (no dm-flakey, no dm-log-writes), and
//! SIGKILL keeps the page cache and every completed O_DIRECT write, so a SIGKILL test passes with
//! every fsync deleted. The simulated disk (`SimDisk`) cuts the power in the other tests, but only
//! under the seam's simulated backend: a sync deleted or skipped in the DMA backend, or in code
//! that goes around the seam, is invisible to it. The ext4 tracepoints `ext4_sync_file_enter` /
//! `ext4_sync_file_exit` fire for every fsync and fdatasync of a file or directory on ext4, from
//! `std::fs` (`sync_all`) and from io_uring (`IORING_OP_FSYNC`, which glommio issues) alike, and
//! `ext4_allocate_inode`, `ext4_unlink_enter` and `ext4_truncate_enter` say when a file was
//! created, unlinked or cut. With the instance's clock on `mono`, their times compare with
//! `CLOCK_MONOTONIC` read around each call, so the test checks the protocol itself: what was
//! synced, in which order, before which acknowledgement.
//!
//! What is checked (each line names its check when it fails; all failures are listed):
//! * every `synced` ack: a completed fdatasync of the record's segment that began after the send
//!   and returned before the ack;
//! * each segment roll: the old segment fdatasynced after its preallocated tail was cut and before
//!   the next segment was created; the sealed index file synced, and the partition directory
//!   synced after the new segment's creation, before any record in it is acknowledged;
//! * a new partition: its directory's parent synced after the directory was made, and the
//!   directory synced after its first segment was created, before `create_topic` returns;
//! * atomic metadata writes (topic definition, deletion marker, view `meta.json`,
//!   `meta/views/<name>.json`, Kafka `producer-ids`, the appliance's view store, view
//!   checkpoints): the file's inode synced after it was created, then its directory synced after
//!   that (after the rename), both before the call returns (a checkpoint: before it is reported);
//! * topic creation and deletion order: the definition durable before the marker goes, the
//!   marker durable before anything is deleted, each removal's directory synced before the next;
//! * `kappa repair`: the cut segment synced after its truncation, and the partition directory
//!   synced after the later segments were unlinked, before the command returns.
//!
//! Root only (tracefs): `#[ignore]`d so that a non-root `cargo test` does not pretend to run it;
//! `.ci/run` runs it, and it fails loudly without root, tracefs or ext4. Inode numbers map
//! events to paths: files are statted while they exist (a temp file keeps its inode through the
//! rename), and allocations are matched by time, since the kernel reuses freed inode numbers.

mod trace;

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse};
use kappa_engine::kafka::client::Client;
use kappa_engine::kafka::{KafkaConfig, KafkaServer};
use kappa_engine::operator::Aggregate;
use kappa_engine::{Durability, Engine, ProducerRecord, TopicConfig, ViewDef};
use kappa_storage::paths;
use trace::{mono_ns, us, Trace, Us};

/// `(t0, t1)`: the test's clock before and after a call, in the trace's resolution.
#[derive(Debug, Clone, Copy)]
struct Window {
    from: Us,
    by: Us,
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Window) {
    let from = us(mono_ns());
    let out = f();
    (out, Window { from, by: us(mono_ns()) })
}

fn ino(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display())).ino()
}

/// A check run once the trace is read.
type Check = Box<dyn FnOnce(&Trace, &mut Checks)>;

/// Every failed check, so one run shows everything a deletion broke.
#[derive(Default)]
struct Checks {
    failed: Vec<String>,
    passed: usize,
}

impl Checks {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if ok {
            self.passed += 1;
        } else {
            self.failed.push(what());
        }
    }

    /// An atomic write of `file` (ino now `file_ino`, created inside `w`): its inode synced
    /// after its creation, then its directory synced after that sync returned, all within `w`.
    fn atomic_write(&mut self, t: &Trace, name: &str, file: &Path, w: Window) {
        let file_ino = ino(file);
        let dir = file.parent().expect("parent");
        let dir_ino = ino(dir);
        let Some(created) = t.allocated(file_ino, w.by).filter(|a| a.t >= w.from) else {
            self.check(false, || {
                format!("{name}: {} was not created within its call", file.display())
            });
            return;
        };
        let synced = t.synced(file_ino, created.t, w.by);
        self.check(synced.is_some(), || {
            format!("{name}: file sync missing: {} not fsynced after creation, before the call returned", file.display())
        });
        let after = synced.and_then(|s| s.exit).unwrap_or(created.t);
        self.check(t.synced(dir_ino, after, w.by).is_some(), || {
            format!("{name}: dir sync missing: {} not fsynced after {} was synced and renamed, before the call returned", dir.display(), file.display())
        });
    }

    /// A directory made inside `w`: its parent synced after its creation, within `w`.
    fn created_dir(&mut self, t: &Trace, name: &str, dir: &Path, w: Window) {
        let parent = dir.parent().expect("parent");
        let created = t.allocated(ino(dir), w.by).filter(|a| a.t >= w.from);
        self.check(created.is_some(), || {
            format!("{name}: {} not created in its call", dir.display())
        });
        if let Some(created) = created {
            self.check(t.synced(ino(parent), created.t, w.by).is_some(), || {
                format!(
                    "{name}: dir sync missing: {} not fsynced after {} was made",
                    parent.display(),
                    dir.display()
                )
            });
        }
    }
}

fn log_config() -> kappa_storage::LogConfig {
    kappa_storage::LogConfig {
        segment_size_bytes_max: 256 * 1024,
        index_interval_bytes: 8 * 1024,
        ..kappa_storage::LogConfig::default()
    }
}

const SENDS: u64 = 60;
const VALUE_BYTES: usize = 16 * 1024;

struct Acked {
    offset: u64,
    segment: u64,
    w: Window,
}

fn segment_of(partition: &Path, offset: u64) -> (u64, PathBuf) {
    let segments = paths::list_segments(partition).expect("list segments");
    segments
        .into_iter()
        .rev()
        .find(|(base, _)| *base <= offset)
        .expect("a segment holds the offset")
}

#[test]
#[ignore = "needs root: tracefs (.ci/run runs it with --ignored)"]
fn every_acknowledgement_and_metadata_change_is_preceded_by_its_fsyncs() {
    trace::preflight();
    let temp = tempfile::Builder::new()
        .prefix("fsync-trace")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("tempdir under the target dir");
    let dir = temp.path();
    let tracer = trace::Instance::start(dir);
    let mut checks = Checks::default();
    let mut later: Vec<Check> = Vec::new();

    let engine = Arc::new(
        Engine::builder().data_dir(dir).shards(1).log_config(log_config()).build().expect("engine"),
    );

    // A topic: marker, partition dir and first segment, definition, marker removed.
    let (result, create) = timed(|| engine.create_topic("t", TopicConfig::new(1)));
    result.expect("create topic");
    let partition = paths::partition_dir(dir, "t", 0);
    let topics_meta = dir.join("meta/topics");
    {
        let (partition, topics_meta) = (partition.clone(), topics_meta.clone());
        let definition = topics_meta.join("t.json");
        let first = paths::list_segments(&partition).expect("segments")[0].1.clone();
        let first_ino = ino(&first);
        let (partition_ino, topics_meta_ino) = (ino(&partition), ino(&topics_meta));
        later.push(Box::new(move |t, c| {
            c.atomic_write(t, "create_topic definition", &definition, create);
            c.created_dir(t, "create_topic partition dir", &partition, create);
            let seg = t.allocated(first_ino, create.by);
            c.check(seg.is_some_and(|a| t.synced(partition_ino, a.t, create.by).is_some()), || {
                "create_topic: dir sync missing: the partition dir not fsynced after its first segment was created".into()
            });
            // The marker: the only unlink in the metadata dir during the create.
            let unlinks = t.unlinks_in(topics_meta_ino, create.from, create.by);
            c.check(unlinks.len() == 1, || format!("create_topic: {} unlinks of the marker", unlinks.len()));
            if let Some(marker) = unlinks.first() {
                let def_sync = t.synced(ino(&definition), create.from, create.by);
                let after = def_sync.and_then(|s| s.exit).unwrap_or(create.from);
                c.check(t.synced(topics_meta_ino, after, marker.t).is_some(), || {
                    "create_topic: dir sync missing: the definition's rename not durable before the marker was removed".into()
                });
                c.check(t.synced(topics_meta_ino, marker.t, create.by).is_some(), || {
                    "create_topic (clear_marker): dir sync missing: the marker's removal not durable before create_topic returned".into()
                });
                let created = t.allocated(marker.ino, marker.t).filter(|a| a.t >= create.from);
                c.check(
                    created.is_some_and(|a| t.synced(marker.ino, a.t, marker.t).is_some()),
                    || "create_topic (mark_deleting): the marker file not fsynced".into(),
                );
            }
        }));
    }

    // `synced` sends, one record each, across several rolls.
    let producer = engine.producer().with_durability(Durability::Synced);
    let mut sends = Vec::new();
    for i in 0..SENDS {
        let record = ProducerRecord::new(vec![i as u8; VALUE_BYTES]).key(b"k".to_vec());
        let (ack, w) = timed(|| producer.send("t", record));
        let offset = ack.expect("synced send").offset;
        sends.push(Acked { offset, segment: ino(&segment_of(&partition, offset).1), w });
    }
    for s in &sends {
        let (offset, segment, w) = (s.offset, s.segment, s.w);
        later.push(Box::new(move |t, c| {
            c.check(t.synced(segment, w.from, w.by).is_some(), || {
                format!("synced ack of offset {offset}: no completed fdatasync of its segment between the send and the ack")
            });
        }));
    }
    // Rolls: each boundary between consecutive segments.
    let segments = paths::list_segments(&partition).expect("segments");
    assert!(segments.len() >= 3, "the sends rolled at least twice: {segments:?}");
    let partition_ino = ino(&partition);
    for pair in segments.windows(2) {
        let (old_base, old) = (pair[0].0, ino(&pair[0].1));
        let (next_base, next) = (pair[1].0, ino(&pair[1].1));
        let index = ino(&paths::index_path(&partition, old_base));
        // The first ack of a record in the next segment: the roll was complete by then.
        let first_next =
            sends.iter().find(|s| s.offset >= next_base).expect("a send after the roll");
        let (deadline, first_send_from) = (first_next.w.by, first_next.w.from);
        let last_old_send = sends.iter().rev().find(|s| s.offset < next_base).map(|s| s.w.from);
        later.push(Box::new(move |t, c| {
            let Some(created) = t.allocated(next, deadline).filter(|a| a.t >= first_send_from.min(last_old_send.unwrap_or(first_send_from))) else {
                c.check(false, || format!("roll at {next_base}: the next segment's creation is not in the trace"));
                return;
            };
            // The roll cuts the preallocated zeros first (preallocation is on by default); its
            // fdatasync must come after the cut, which no append's sync does.
            let cut = t.truncated(old, last_old_send.unwrap_or(0), created.t);
            c.check(cut.is_some(), || format!("roll at {next_base}: the sealed segment's preallocated tail was not cut"));
            let from = cut.map_or(u64::MAX, |a| a.t);
            c.check(t.synced(old, from, created.t).is_some(), || {
                format!("roll at {next_base}: segment sync missing: the sealed segment (base {old_base}) not fdatasynced after its cut, before the next was created")
            });
            c.check(
                t.allocated(index, deadline).is_some_and(|a| t.synced(index, a.t, deadline).is_some()),
                || format!("roll at {next_base}: index sync missing: the sealed index not fsynced before the next segment took acks"),
            );
            c.check(t.synced(partition_ino, created.t, deadline).is_some(), || {
                format!("roll at {next_base}: dir sync missing: the partition dir not fsynced after the next segment was created, before its first ack")
            });
        }));
    }

    // A view: its version mark (meta/views/v.json) and meta.json before create_view returns,
    // then a checkpoint, synced with its directory before it is reported.
    let def = ViewDef::new("t").aggregate(Aggregate::Count).checkpoint_every(50);
    let (view, create_view) = timed(|| engine.create_view("v", def));
    let view = view.expect("create view");
    {
        let mark = dir.join("meta/views/v.json");
        let meta = dir.join("views/v/meta.json");
        // A new view's first version is served from the start: nothing rewrites these files
        // (a swap would), so their inodes are still those the create wrote.
        later.push(Box::new(move |t, c| {
            c.atomic_write(t, "create_view version mark (meta/views/v.json)", &mark, create_view);
            c.atomic_write(t, "create_view meta.json", &meta, create_view);
        }));
    }
    let version = view.version();
    let checkpoint_dir = dir.join(format!("views/v/{version}/0"));
    let (checkpoint, reported) = {
        let from = us(mono_ns());
        let mut found = None;
        for _ in 0..10_000 {
            let progress = view.progress_of(version).expect("progress");
            if let Some(offset) = progress.partitions[0].checkpointed {
                let by = us(mono_ns());
                // The reported checkpoint's file (named by its offset). One checkpoint is due
                // in this test (60 records, one every 50), so nothing removes it meanwhile.
                let file = checkpoint_dir.join(format!("{offset:020}.ckpt"));
                found = Some((file, Window { from, by }));
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        found.expect("the view reported a checkpoint")
    };
    {
        let checkpoint_ino = ino(&checkpoint);
        later.push(Box::new(move |t, c| {
            // Written while the view folded: its creation lies before the report, not in a window.
            let Some(created) = t.allocated(checkpoint_ino, reported.by) else {
                c.check(false, || format!("checkpoint {} not created in the trace", checkpoint.display()));
                return;
            };
            let synced = t.synced(checkpoint_ino, created.t, reported.by);
            c.check(synced.is_some(), || {
                format!("checkpoint: file sync missing: {} not fsynced before it was reported", checkpoint.display())
            });
            let after = synced.and_then(|s| s.exit).unwrap_or(created.t);
            let dir_ino = ino(checkpoint.parent().expect("dir"));
            c.check(t.synced(dir_ino, after, reported.by).is_some(), || {
                "checkpoint: dir sync missing: its directory not fsynced after the file, before it was reported".into()
            });
        }));
    }

    // Kafka: InitProducerId reserves a block of producer ids durably before answering.
    {
        let mut config = KafkaConfig::new("127.0.0.1:0".parse().expect("addr"));
        config.group_initial_rebalance_delay = Duration::ZERO;
        let kafka = KafkaServer::start(&engine, config).expect("kafka");
        let mut client = Client::connect(kafka.local_addr()).expect("connect");
        let request = InitProducerIdRequest::default().with_transaction_timeout_ms(60_000);
        let (response, w): (InitProducerIdResponse, Window) =
            timed(|| client.call(4, &request).expect("init producer id"));
        assert_eq!(response.error_code, 0);
        let path = dir.join("kafka/producer-ids");
        let _ = ino(&path);
        later.push(Box::new(move |t, c| {
            c.atomic_write(t, "kafka producer-id reservation", &path, w)
        }));
        drop(kafka);
    }

    // The appliance's view store: a put (directory created, file written) and a remove.
    {
        let store = kappa_tools::serve::store::ViewStore::new(dir, kappa_storage::io::Disk::Dma);
        let spec: kappa_tools::serve::spec::ViewSpec =
            serde_json::from_str(r#"{"topic":"t"}"#).expect("spec");
        let (result, put) = timed(|| store.put("s", 1, &spec));
        result.expect("store put");
        let (file, views) = (dir.join("serve/views/s.json"), dir.join("serve/views"));
        let file_ino = ino(&file);
        let views_ino = ino(&views);
        let (result, remove) = timed(|| store.remove("s"));
        result.expect("store remove");
        later.push(Box::new(move |t, c| {
            c.created_dir(t, "serve store dir serve/", views.parent().expect("serve"), put);
            c.created_dir(t, "serve store dir serve/views", &views, put);
            // The file is gone: check the write by inode.
            let created = t.allocated(file_ino, put.by).filter(|a| a.t >= put.from);
            let synced = created.and_then(|a| t.synced(file_ino, a.t, put.by));
            c.check(synced.is_some(), || "serve store put: file sync missing".into());
            let after = synced.and_then(|s| s.exit).unwrap_or(put.from);
            c.check(t.synced(views_ino, after, put.by).is_some(), || {
                "serve store put: dir sync missing after the rename".into()
            });
            let unlink = t.unlinks_in(views_ino, remove.from, remove.by);
            c.check(unlink.iter().any(|u| u.ino == file_ino), || "serve store remove: no unlink".into());
            let at = unlink.first().map_or(remove.from, |u| u.t);
            c.check(t.synced(views_ino, at, remove.by).is_some(), || {
                "serve store remove: dir sync missing: the unlink not durable before remove returned".into()
            });
        }));
    }

    // Topic deletion: marker, partition files, definition, marker, each step durable.
    {
        engine.create_topic("gone", TopicConfig::new(1)).expect("create gone");
        producer.send("gone", ProducerRecord::new(b"x".to_vec())).expect("send gone");
        let gone_partition = paths::partition_dir(dir, "gone", 0);
        let gone_partition_ino = ino(&gone_partition);
        let topics_ino = ino(&dir.join("topics"));
        let topics_meta_ino = ino(&topics_meta);
        let definition_ino = ino(&topics_meta.join("gone.json"));
        let (result, delete) = timed(|| engine.delete_topic("gone"));
        result.expect("delete topic");
        later.push(Box::new(move |t, c| {
            let files = t.unlinks_in(gone_partition_ino, delete.from, delete.by);
            c.check(!files.is_empty(), || "delete_topic: no segment unlinked".into());
            let meta = t.unlinks_in(topics_meta_ino, delete.from, delete.by);
            let definition = meta.iter().find(|u| u.ino == definition_ino).copied();
            let marker = meta.iter().find(|u| u.ino != definition_ino).copied();
            let (Some(definition), Some(marker), Some(first_file), Some(last_file)) =
                (definition, marker, files.first(), files.last())
            else {
                c.check(false, || format!("delete_topic: unlinks missing: {meta:?} {files:?}"));
                return;
            };
            // The marker was written (atomically) before anything was deleted.
            let marker_created = t.allocated(marker.ino, first_file.t).filter(|a| a.t >= delete.from);
            let marker_synced = marker_created.and_then(|a| t.synced(marker.ino, a.t, first_file.t));
            c.check(marker_synced.is_some(), || {
                "delete_topic (mark_deleting): file sync missing: the marker not fsynced before the first unlink".into()
            });
            let after = marker_synced.and_then(|s| s.exit).unwrap_or(delete.from);
            c.check(t.synced(topics_meta_ino, after, first_file.t).is_some(), || {
                "delete_topic (mark_deleting): dir sync missing: the marker not durable before the first unlink".into()
            });
            c.check(t.synced(topics_ino, last_file.t, definition.t).is_some(), || {
                "delete_topic (finish_deletion): dir sync missing: topics/ not fsynced after the partition files went, before the definition was unlinked".into()
            });
            c.check(t.synced(topics_meta_ino, definition.t, marker.t).is_some(), || {
                "delete_topic (finish_deletion): dir sync missing: the definition's unlink not durable before the marker was unlinked".into()
            });
            c.check(t.synced(topics_meta_ino, marker.t, delete.by).is_some(), || {
                "delete_topic (finish_deletion): dir sync missing: the marker's unlink not durable before delete_topic returned".into()
            });
        }));
    }

    drop(view);
    // A clean shutdown records the last sync in the partition's watermark (`synced.wm`), the only
    // proof for the frames no later frame vouches for: the watermark's inode is fdatasynced after
    // the active segment's last sync, before `shutdown` returns.
    let watermark = kappa_storage::watermark::path(&partition);
    let (result, close) = timed(|| engine.shutdown());
    result.expect("shutdown");
    drop(engine);
    {
        let now = paths::list_segments(&partition).expect("segments");
        let (wm_ino, active) = (ino(&watermark), ino(&now.last().expect("segment").1));
        later.push(Box::new(move |t, c| {
            let segment_sync = t.synced(active, close.from, close.by);
            let after = segment_sync.and_then(|s| s.exit).unwrap_or(close.from);
            c.check(t.synced(wm_ino, after, close.by).is_some(), || {
                "shutdown: watermark sync missing: synced.wm not fdatasynced after the active segment's last sync, before shutdown returned".into()
            });
        }));
    }

    // `kappa repair`: damage in the middle of a sealed segment; repair cuts it there (truncate,
    // fsync) and deletes every later segment (unlinks, partition dir fsync).
    {
        let damaged = &segments[1];
        let file =
            std::fs::OpenOptions::new().read(true).write(true).open(&damaged.1).expect("open");
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, 100_000).expect("read");
        file.write_all_at(&[byte[0] ^ 0x10], 100_000).expect("write");
        drop(file);
        let damaged_ino = ino(&damaged.1);
        let args = vec!["kappa".to_string(), "repair".into(), dir.display().to_string()];
        let (code, w) = timed(|| kappa_tools::cli::main_with_args(args));
        assert_eq!(code, kappa_tools::cli::EXIT_OK, "kappa repair");
        later.push(Box::new(move |t, c| {
            let cut = t.truncated(damaged_ino, w.from, w.by);
            c.check(cut.is_some(), || "kappa repair: the damaged segment was not truncated".into());
            let from = cut.map_or(w.from, |a| a.t);
            c.check(t.synced(damaged_ino, from, w.by).is_some(), || {
                "kappa repair: truncation sync missing: the cut segment not fsynced after the cut"
                    .into()
            });
            let unlinks = t.unlinks_in(partition_ino, w.from, w.by);
            c.check(!unlinks.is_empty(), || "kappa repair: no later segment deleted".into());
            let last = unlinks.last().map_or(w.from, |u| u.t);
            c.check(t.synced(partition_ino, last, w.by).is_some(), || {
                "kappa repair: dir sync missing: the partition dir not fsynced after the unlinks"
                    .into()
            });
            // Repair lowers the watermark to its cut by replacing the file (temp file, fsync,
            // rename, dir fsync): a watermark left above the cut would refuse the next open.
            c.atomic_write(t, "kappa repair: the lowered watermark", &watermark, w);
        }));
    }

    let trace = tracer.stop();
    drop(tracer);
    assert!(!trace.syncs.is_empty(), "the trace saw no fsync at all");
    for check in later {
        check(&trace, &mut checks);
    }
    eprintln!(
        "fsync trace: {} syncs, {} allocations, {} unlinks traced; {} checks passed, {} failed",
        trace.syncs.len(),
        trace.allocs.len(),
        trace.unlinks.len(),
        checks.passed,
        checks.failed.len()
    );
    assert!(checks.failed.is_empty(), "fsync protocol violated:\n  {}", checks.failed.join("\n  "));
}
