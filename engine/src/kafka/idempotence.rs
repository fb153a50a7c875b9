//! Idempotent producers: producer ids, and per-partition deduplication by (id, epoch, sequence).
//!
//! A client retrying a batch whose acknowledgement it lost must not append it twice. As in Kafka,
//! each partition remembers the last `BATCHES_KEPT` batches of every producer (first and last
//! sequence, offsets): a retry of one of them is answered with its original offsets, a sequence
//! gap is `OUT_OF_ORDER_SEQUENCE_NUMBER`, an older epoch `INVALID_PRODUCER_EPOCH`.
//!
//! The table is rebuilt from the log: the stored batches keep the producer id, epoch and base
//! sequence in their v2 header, so on a partition's first idempotent append after a start the end
//! of the log (`producer_state_scan_bytes`, whole segments) is scanned. A producer whose batches
//! all lie before that window is treated as new (its next sequence is accepted as is), which only
//! matters for a retry of a batch older than the window.
//!
//! Producer ids come from `IdAllocator`: blocks of ids reserved durably in `DIR/kafka/producer-ids`
//! before use, so no id is handed out twice across restarts.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use kappa_storage::io::Disk;
use kappa_storage::{PartitionLog, Seek};

use super::codec::code;

/// Batches remembered per producer and partition (Kafka's limit for in-flight requests).
pub(crate) const BATCHES_KEPT: usize = 5;
/// Producers remembered per partition; past it the one idle longest (oldest offset) is dropped.
const PRODUCERS_MAX: usize = 10_000;

/// Where an appended batch of a producer landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchMeta {
    pub(crate) first_seq: i32,
    pub(crate) last_seq: i32,
    pub(crate) base_offset: u64,
    pub(crate) last_offset: u64,
}

#[derive(Debug)]
struct ProducerEntry {
    epoch: i16,
    batches: VecDeque<BatchMeta>,
}

/// What to do with an incoming idempotent batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    Append,
    /// A retry: answer with the original batch's offsets.
    Duplicate(BatchMeta),
    Refuse(i16, &'static str),
}

/// Kafka's sequence arithmetic: sequences wrap from `i32::MAX` to 0.
pub(crate) fn last_sequence(first: i32, count: i32) -> i32 {
    let increment = count - 1;
    if first > i32::MAX - increment {
        increment - (i32::MAX - first) - 1
    } else {
        first + increment
    }
}

fn next_sequence(last: i32) -> i32 {
    if last == i32::MAX {
        0
    } else {
        last + 1
    }
}

/// One partition's producers.
#[derive(Debug, Default)]
pub(crate) struct ProducerTable {
    producers: BTreeMap<i64, ProducerEntry>,
}

impl ProducerTable {
    pub(crate) fn check(&self, producer_id: i64, epoch: i16, first_seq: i32, count: i32) -> Check {
        if first_seq < 0 {
            return Check::Refuse(code::INVALID_RECORD, "an idempotent batch needs a sequence");
        }
        let Some(entry) = self.producers.get(&producer_id) else {
            return Check::Append;
        };
        if epoch < entry.epoch {
            return Check::Refuse(code::INVALID_PRODUCER_EPOCH, "the producer's epoch is fenced");
        }
        if epoch > entry.epoch {
            return if first_seq == 0 {
                Check::Append
            } else {
                Check::Refuse(
                    code::OUT_OF_ORDER_SEQUENCE_NUMBER,
                    "a new epoch must start at sequence 0",
                )
            };
        }
        let last_seq = last_sequence(first_seq, count);
        if let Some(done) =
            entry.batches.iter().find(|b| b.first_seq == first_seq && b.last_seq == last_seq)
        {
            return Check::Duplicate(*done);
        }
        match entry.batches.back() {
            Some(last) if first_seq != next_sequence(last.last_seq) => Check::Refuse(
                code::OUT_OF_ORDER_SEQUENCE_NUMBER,
                "the sequence does not follow the producer's last batch",
            ),
            _ => Check::Append,
        }
    }

    /// Remembers an appended batch (also used while rebuilding from the log).
    pub(crate) fn record(
        &mut self,
        producer_id: i64,
        epoch: i16,
        first_seq: i32,
        count: i32,
        base_offset: u64,
    ) {
        if !self.producers.contains_key(&producer_id) && self.producers.len() >= PRODUCERS_MAX {
            let idle = self
                .producers
                .iter()
                .min_by_key(|(_, e)| e.batches.back().map_or(0, |b| b.last_offset))
                .map(|(id, _)| *id);
            if let Some(idle) = idle {
                self.producers.remove(&idle);
            }
        }
        let entry = self
            .producers
            .entry(producer_id)
            .or_insert(ProducerEntry { epoch, batches: VecDeque::new() });
        if epoch != entry.epoch {
            entry.epoch = epoch;
            entry.batches.clear();
        }
        if entry.batches.len() == BATCHES_KEPT {
            entry.batches.pop_front();
        }
        entry.batches.push_back(BatchMeta {
            first_seq,
            last_seq: last_sequence(first_seq, count),
            base_offset,
            last_offset: base_offset + count as u64 - 1,
        });
    }

    /// Rebuilds the table from the producer fields of the batches at the end of `log`.
    pub(crate) async fn load(
        log: &PartitionLog,
        scan_bytes: u64,
    ) -> Result<ProducerTable, kappa_storage::Error> {
        // Everything appended must be readable first, or a batch still in the write buffer
        // would be missed.
        let end = log.end_offset();
        if end > log.start_offset() {
            log.wait_readable(end - 1).await?;
        }
        let mut start = log.start_offset();
        let mut covered = 0u64;
        for segment in log.segments().iter().rev() {
            start = segment.base_offset.max(log.start_offset());
            covered += segment.size_bytes;
            if covered >= scan_bytes {
                break;
            }
        }
        let mut table = ProducerTable::default();
        let mut reader = log.reader(Seek::Offset(start))?;
        while let Some(read) = reader.next_batch().await? {
            let kafka = read.batch.kafka_bytes();
            if kafka.len() >= 61 {
                let pid = i64::from_be_bytes(kafka[43..51].try_into().unwrap_or([0xff; 8]));
                let epoch = i16::from_be_bytes([kafka[51], kafka[52]]);
                let seq = i32::from_be_bytes([kafka[53], kafka[54], kafka[55], kafka[56]]);
                if pid >= 0 && seq >= 0 {
                    let count = read.batch.record_count() as i32;
                    table.record(pid, epoch, seq, count, read.batch.base_offset());
                }
            }
            glommio::yield_if_needed().await;
        }
        Ok(table)
    }
}

/// A partition's Kafka append state on its owning shard: appends from every connection go
/// through `lock` in arrival order, and `table` is loaded on the first idempotent batch.
pub(crate) struct PartitionSeq {
    /// The log this state belongs to (a deleted and re-created topic gets a new one).
    pub(crate) log: Rc<PartitionLog>,
    pub(crate) lock: glommio::sync::Semaphore,
    pub(crate) table: RefCell<Option<ProducerTable>>,
}

impl PartitionSeq {
    pub(crate) fn new(log: Rc<PartitionLog>) -> Self {
        PartitionSeq { log, lock: glommio::sync::Semaphore::new(1), table: RefCell::new(None) }
    }
}

/// Hands out producer ids from durably reserved blocks.
///
/// The reservation file goes through the storage seam (`Disk`), so the simulated disk sees it and
/// power-cut tests cover it. Only blocking forms are used: `open` runs on the thread starting the
/// Kafka server, `allocate` on a shard's blocking pool (`init_producer_id`), never on a shard.
#[derive(Debug)]
pub(crate) struct IdAllocator {
    disk: Disk,
    path: PathBuf,
    next: i64,
    reserved_end: i64,
}

const ID_BLOCK: i64 = 1000;

impl IdAllocator {
    /// Reads the reservation file: ids below its value may have been used. Creates `DIR/kafka`
    /// durably (each directory it adds is fsynced into its parent), so a reservation written
    /// into it cannot vanish with its directory at a power cut.
    pub(crate) fn open(disk: &Disk, data_dir: &Path) -> Result<IdAllocator, kappa_storage::Error> {
        let dir = data_dir.join("kafka");
        disk.create_dir_all_blocking(&dir)?;
        let path = dir.join("producer-ids");
        let next = match disk.read_file_blocking(&path) {
            Ok(bytes) => parse_reservation(&bytes).ok_or_else(|| kappa_storage::Error::Io {
                op: "parse the producer-id reservation (a decimal id) of",
                path: path.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{:?}", String::from_utf8_lossy(&bytes)),
                ),
            })?,
            Err(e) if e.is_not_found() => 0,
            Err(e) => return Err(e),
        };
        Ok(IdAllocator { disk: disk.clone(), path, next, reserved_end: next })
    }

    /// The next id; reserves (and fsyncs) a new block first when the current one is used up.
    /// Blocking file I/O: call it off the shards.
    pub(crate) fn allocate(&mut self) -> Result<i64, kappa_storage::Error> {
        if self.next >= self.reserved_end {
            let end = self.next + ID_BLOCK;
            self.disk.write_file_atomic_blocking(&self.path, end.to_string().as_bytes())?;
            self.reserved_end = end;
        }
        let id = self.next;
        self.next += 1;
        Ok(id)
    }
}

/// The reserved end written by `allocate`: a non-negative decimal number.
fn parse_reservation(bytes: &[u8]) -> Option<i64> {
    std::str::from_utf8(bytes).ok()?.trim().parse::<i64>().ok().filter(|n| *n >= 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_gaps_and_fencing() {
        let mut t = ProducerTable::default();
        assert_eq!(t.check(1, 0, 0, 10), Check::Append);
        t.record(1, 0, 0, 10, 100);
        assert_eq!(t.check(1, 0, 10, 5), Check::Append);
        t.record(1, 0, 10, 5, 110);
        let retry = t.check(1, 0, 0, 10);
        assert!(
            matches!(retry, Check::Duplicate(b) if b.base_offset == 100 && b.last_offset == 109)
        );
        assert!(matches!(
            t.check(1, 0, 20, 1),
            Check::Refuse(code::OUT_OF_ORDER_SEQUENCE_NUMBER, _)
        ));
        assert!(matches!(
            t.check(1, 0, 5, 5),
            Check::Refuse(code::OUT_OF_ORDER_SEQUENCE_NUMBER, _)
        ));
        assert_eq!(t.check(1, 1, 0, 1), Check::Append, "a bumped epoch restarts at 0");
        t.record(1, 1, 0, 1, 200);
        assert!(matches!(t.check(1, 0, 15, 1), Check::Refuse(code::INVALID_PRODUCER_EPOCH, _)));
        // Only the last five batches are remembered.
        for i in 0..6 {
            t.record(2, 0, i, 1, 300 + i as u64);
        }
        assert_eq!(
            t.check(2, 0, 0, 1),
            Check::Refuse(
                code::OUT_OF_ORDER_SEQUENCE_NUMBER,
                "the sequence does not follow the producer's last batch"
            )
        );
        assert!(matches!(t.check(2, 0, 1, 1), Check::Duplicate(_)));
    }

    #[test]
    fn sequences_wrap_like_kafka() {
        assert_eq!(last_sequence(i32::MAX, 1), i32::MAX);
        assert_eq!(last_sequence(i32::MAX, 2), 0);
        assert_eq!(last_sequence(i32::MAX - 1, 5), 2);
        let mut t = ProducerTable::default();
        t.record(3, 0, i32::MAX - 1, 2, 0);
        assert_eq!(t.check(3, 0, 0, 1), Check::Append);
    }

    #[test]
    fn ids_are_never_reused_across_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut a = IdAllocator::open(&Disk::Dma, dir.path()).expect("open");
        let first: Vec<i64> = (0..3).map(|_| a.allocate().expect("id")).collect();
        assert_eq!(first, vec![0, 1, 2]);
        drop(a);
        let mut b = IdAllocator::open(&Disk::Dma, dir.path()).expect("reopen");
        let next = b.allocate().expect("id");
        assert!(next >= ID_BLOCK, "{next} could repeat an id of the last run");
        std::fs::write(dir.path().join("kafka/producer-ids"), "12x").expect("damage");
        let error = IdAllocator::open(&Disk::Dma, dir.path()).expect_err("damaged reservation");
        assert!(error.to_string().contains("producer-ids"), "{error}");
    }

    /// Every id handed out before a power cut is never handed out again after it: the power
    /// fails at every disk operation of opening the allocator and of up to three reservations
    /// (the directory's creation, the temp file, its fsync, the rename, the directory fsync), on
    /// the simulated disk, whose crash image drops or keeps each unsynced change by the seed.
    /// Catches a deleted fsync of the reservation (`write_file_atomic`: file or directory) and
    /// of the creation of `DIR/kafka` (`create_dir_all`): ids restart at an old block, or the
    /// reservation reads back damaged.
    #[test]
    fn ids_handed_out_before_a_power_cut_are_never_handed_out_again() {
        use kappa_storage::io::{FaultOptions, SimDisk};
        let data = Path::new("/data");
        let counts = [0i64, 1, ID_BLOCK - 1, ID_BLOCK, ID_BLOCK + 1, 2 * ID_BLOCK + 500];
        let (mut rounds, mut cut_before_done) = (0, 0);
        for cut_after in 0..24u64 {
            for (c, &count) in counts.iter().enumerate() {
                for variant in 0..3u64 {
                    let seed = cut_after * 1_000 + c as u64 * 10 + variant;
                    let sim = SimDisk::new(seed);
                    let disk = Disk::Sim(sim.clone());
                    // The data dir exists durably, as `Engine::start` leaves it.
                    disk.create_dir_all_blocking(data).expect("data dir");
                    let ops = sim.stats().ops;
                    sim.set_faults(FaultOptions {
                        freeze_after_ops: Some(ops + cut_after),
                        ..Default::default()
                    });
                    let mut handed = Vec::new();
                    if let Ok(mut ids) = IdAllocator::open(&disk, data) {
                        for _ in 0..count {
                            match ids.allocate() {
                                Ok(id) => handed.push(id),
                                Err(_) => break, // the power is out
                            }
                        }
                    }
                    cut_before_done += u64::from((handed.len() as i64) < count);
                    let image = sim.power_cut(seed);
                    let mut ids = IdAllocator::open(&Disk::Sim(image), data)
                        .unwrap_or_else(|e| panic!("seed {seed}: recovery failed: {e}"));
                    let next = ids.allocate().unwrap_or_else(|e| panic!("seed {seed}: {e}"));
                    if let Some(last) = handed.last() {
                        assert!(
                            next > *last,
                            "seed {seed} (cut after {cut_after} operations, {} of {count} ids \
                             handed out): id {next} handed out again after the power cut",
                            handed.len()
                        );
                    }
                    rounds += 1;
                }
            }
        }
        assert!(cut_before_done > 0 && cut_before_done < rounds, "the cuts missed a side");
    }
}
