//! What staging a record costs in the shard's accumulator, by layout: the evidence for its next
//! step (issue 14, random keys over thousands of partitions).
//!
//! The accumulator copies each record of a producer's batch into its partition's staged batch
//! (`shard::accumulate`): with random keys the destinations are thousands of buffers, and each
//! record writes to three of their tails (the bytes, a 48-byte entry, a 16-byte slice), most of
//! the staging shards' time in `perf`. This models one shard's share of `kappa-bench partitions`
//! (500,000 records of 8 + 100 bytes in producer batches of 1,000, random partitions) three ways,
//! with the same data and no engine code, so that the layouts compare alone:
//! - `copy`: today's layout (bytes, entries and slices in three vectors per partition), then the
//!   flush's read of each partition's records in order;
//! - `inline`: the same copy into one vector per partition (a 16-byte header before each record);
//! - `refs`: only an 8-byte reference per record (producer batch, index), then the flush's gather
//!   of each partition's records from the producer batches (the copy the log makes anyway).
//!
//! `cargo bench -p kappa-engine --bench staging` prints, besides criterion's groups, the paired
//! ratio of `refs` to `copy` (median and range of alternating rounds).

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const RECORDS: usize = 500_000;
const PER_BATCH: usize = 1000;
const KEY: usize = 8;
const VALUE: usize = 100;

#[derive(Clone, Copy)]
struct Entry {
    key: Option<(u32, u32)>,
    value: (u32, u32),
    timestamp: Option<i64>,
    headers: (u32, u32),
}

#[derive(Clone, Copy)]
struct Slice {
    request: usize,
    part: u32,
    start: u32,
}

struct Batch {
    data: Vec<u8>,
    entries: Vec<Entry>,
}

struct Input {
    batches: Vec<Batch>,
    /// The partition of each record, in batch order.
    partitions: Vec<u32>,
    partition_count: usize,
}

fn key(i: u64) -> u64 {
    let mut x = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

fn input(partition_count: usize) -> Input {
    let mut batches = Vec::new();
    let mut partitions = Vec::with_capacity(RECORDS);
    for b in 0..RECORDS / PER_BATCH {
        let mut batch = Batch {
            data: Vec::with_capacity(PER_BATCH * (KEY + VALUE)),
            entries: Vec::with_capacity(PER_BATCH),
        };
        for r in 0..PER_BATCH {
            let k = key((b * PER_BATCH + r) as u64);
            let start = batch.data.len() as u32;
            batch.data.extend_from_slice(&k.to_le_bytes());
            batch.data.extend_from_slice(&[b'v'; VALUE]);
            batch.entries.push(Entry {
                key: Some((start, KEY as u32)),
                value: (start + KEY as u32, VALUE as u32),
                timestamp: None,
                headers: (0, 0),
            });
            partitions.push((k % partition_count as u64) as u32);
        }
        batches.push(batch);
    }
    Input { batches, partitions, partition_count }
}

fn slice(data: &[u8], (start, len): (u32, u32)) -> &[u8] {
    &data[start as usize..(start + len) as usize]
}

/// Today's layout; returns a checksum of what the flush read.
fn copy(input: &Input, out: &mut Vec<u8>) -> u64 {
    let per = RECORDS / input.partition_count * 2;
    let mut staged: Vec<Batch> = (0..input.partition_count)
        .map(|_| Batch {
            data: Vec::with_capacity(per * (KEY + VALUE)),
            entries: Vec::with_capacity(per),
        })
        .collect();
    let mut slices: Vec<Vec<Slice>> =
        (0..input.partition_count).map(|_| Vec::with_capacity(per)).collect();
    let mut n = 0;
    for (b, batch) in input.batches.iter().enumerate() {
        for e in &batch.entries {
            let p = input.partitions[n] as usize;
            n += 1;
            let staged = &mut staged[p];
            let start = staged.data.len() as u32;
            let k = e.key.map(|k| slice(&batch.data, k)).unwrap_or(&[]);
            staged.data.extend_from_slice(k);
            staged.data.extend_from_slice(slice(&batch.data, e.value));
            staged.entries.push(Entry {
                key: e.key.map(|(_, len)| (start, len)),
                value: (start + k.len() as u32, e.value.1),
                timestamp: e.timestamp,
                headers: (0, 0),
            });
            let start = staged.entries.len() as u32 - 1;
            slices[p].push(Slice { request: b, part: p as u32, start });
        }
    }
    let mut sum = 0u64;
    out.clear();
    for (staged, slices) in staged.iter().zip(&slices) {
        for e in &staged.entries {
            sum = sum.wrapping_add(u64::from(e.headers.1));
            if let Some(k) = e.key {
                out.extend_from_slice(slice(&staged.data, k));
            }
            out.extend_from_slice(slice(&staged.data, e.value));
        }
        for s in slices {
            sum = sum.wrapping_add((s.request + s.part as usize + s.start as usize) as u64);
        }
    }
    sum.wrapping_add(out.len() as u64)
}

/// One vector per partition: a 16-byte header (key length, value length, request, index)
/// before each record's bytes.
fn inline(input: &Input, out: &mut Vec<u8>) -> u64 {
    let per = RECORDS / input.partition_count * 2;
    let mut staged: Vec<Vec<u8>> =
        (0..input.partition_count).map(|_| Vec::with_capacity(per * (16 + KEY + VALUE))).collect();
    let mut n = 0;
    for (b, batch) in input.batches.iter().enumerate() {
        for (r, e) in batch.entries.iter().enumerate() {
            let p = input.partitions[n] as usize;
            n += 1;
            let k = e.key.map(|k| slice(&batch.data, k)).unwrap_or(&[]);
            let v = slice(&batch.data, e.value);
            let mut header = [0u8; 16];
            header[0..4].copy_from_slice(&(k.len() as u32).to_le_bytes());
            header[4..8].copy_from_slice(&(v.len() as u32).to_le_bytes());
            header[8..12].copy_from_slice(&(b as u32).to_le_bytes());
            header[12..16].copy_from_slice(&(r as u32).to_le_bytes());
            let staged = &mut staged[p];
            staged.extend_from_slice(&header);
            staged.extend_from_slice(k);
            staged.extend_from_slice(v);
        }
    }
    let mut sum = 0u64;
    out.clear();
    for staged in &staged {
        let mut at = 0;
        while at < staged.len() {
            let word = |i: usize| {
                u32::from_le_bytes(staged[at + i..at + i + 4].try_into().expect("4 bytes")) as usize
            };
            let (k, v) = (word(0), word(4));
            sum = sum.wrapping_add((word(8) + word(12)) as u64);
            out.extend_from_slice(&staged[at + 16..at + 16 + k + v]);
            at += 16 + k + v;
        }
    }
    sum.wrapping_add(out.len() as u64)
}

/// An 8-byte reference per record, then the gather.
fn refs(input: &Input, out: &mut Vec<u8>) -> u64 {
    let per = RECORDS / input.partition_count * 2;
    let mut staged: Vec<Vec<u64>> =
        (0..input.partition_count).map(|_| Vec::with_capacity(per)).collect();
    let mut n = 0;
    for (b, batch) in input.batches.iter().enumerate() {
        for r in 0..batch.entries.len() {
            let p = input.partitions[n] as usize;
            n += 1;
            staged[p].push(((b as u64) << 32) | r as u64);
        }
    }
    let mut sum = 0u64;
    out.clear();
    for staged in &staged {
        for &reference in staged {
            let (b, r) = ((reference >> 32) as usize, (reference & 0xffff_ffff) as usize);
            let batch = &input.batches[b];
            let e = batch.entries[r];
            if let Some(k) = e.key {
                out.extend_from_slice(slice(&batch.data, k));
            }
            out.extend_from_slice(slice(&batch.data, e.value));
            sum = sum.wrapping_add((b + r) as u64);
        }
    }
    sum.wrapping_add(out.len() as u64)
}

type Layout = fn(&Input, &mut Vec<u8>) -> u64;

/// `refs` and `inline` over `copy`, alternating which runs first: medians and ranges.
fn paired(input: &Input, out: &mut Vec<u8>) {
    let rounds = 11;
    let time = |f: Layout, out: &mut Vec<u8>| {
        #[allow(clippy::disallowed_methods)] // A benchmark measures wall time.
        let started = Instant::now();
        black_box(f(input, out));
        started.elapsed().as_secs_f64()
    };
    let (mut to_refs, mut to_inline) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let (c, r, i) = if round % 2 == 0 {
            let c = time(copy, out);
            (c, time(refs, out), time(inline, out))
        } else {
            let i = time(inline, out);
            let r = time(refs, out);
            (time(copy, out), r, i)
        };
        to_refs.push(r / c);
        to_inline.push(i / c);
    }
    let summary = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        format!("{:.2} [{:.2}-{:.2}]", v[v.len() / 2], v[0], v[v.len() - 1])
    };
    println!(
        "staging over {} partitions, time over copy's ({rounds} alternating rounds): refs {}, \
         inline {}",
        input.partition_count,
        summary(&mut to_refs),
        summary(&mut to_inline)
    );
}

fn layouts(c: &mut Criterion) {
    let mut out = Vec::with_capacity(RECORDS * (KEY + VALUE));
    for partitions in [500, 2000] {
        let input = input(partitions);
        paired(&input, &mut out);
        let mut group = c.benchmark_group(format!("staging_{partitions}_partitions"));
        group.sample_size(10);
        group.throughput(Throughput::Elements(RECORDS as u64));
        let layouts: [(&str, Layout); 3] = [("copy", copy), ("inline", inline), ("refs", refs)];
        for (name, layout) in layouts {
            group.bench_function(name, |b| b.iter(|| black_box(layout(&input, &mut out))));
        }
        group.finish();
    }
}

criterion_group!(benches, layouts);
criterion_main!(benches);
